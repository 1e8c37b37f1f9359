"""The gateway's operation registry: Kinesis operation name -> implementation.

``OPERATIONS`` holds everything streamd answers: stream administration (streams.py), records
(records.py), enhanced fan-out (fanout.py), stream and account settings (settings.py).
``UNSUPPORTED`` lists the rest of the Kinesis API (botocore's service model at the time of
writing): those are answered with an InvalidArgumentException naming the operation, never a
silent success. A name in neither set is not a Kinesis operation at all:
UnknownOperationException. tests/integration/test_kinesis_operations.py checks both sets against
the installed botocore's model, so an operation a newer botocore adds fails that test until it
is listed here.
"""

from __future__ import annotations

from typing import Final

from .fanout import FANOUT_OPERATIONS
from .records import RECORD_OPERATIONS
from .settings import SETTINGS_OPERATIONS
from .streams import STREAM_OPERATIONS
from .types import Operation

OPERATIONS: Final[dict[str, Operation]] = {
    **STREAM_OPERATIONS,
    **RECORD_OPERATIONS,
    **FANOUT_OPERATIONS,
    **SETTINGS_OPERATIONS,
}

UNSUPPORTED: Final = frozenset(
    {
        "AcknowledgeDeadLetterQueueRecords",
        "AcknowledgeQueueRecords",
        "CreateChannel",
        "CreateQueue",
        "DeleteChannel",
        "DeleteQueue",
        "DeleteResourcePolicy",
        "DescribeAccountSettings",
        "DescribeChannel",
        "DescribeQueue",
        "DisableEnhancedMonitoring",
        "EnableEnhancedMonitoring",
        "GetResourcePolicy",
        "ListChannels",
        "ListQueues",
        "PutResourcePolicy",
        "ReceiveDeadLetterQueueRecords",
        "ReceiveQueueRecords",
        "RestoreDeadLetterQueueRecords",
        "StartStreamEncryption",
        "StopStreamEncryption",
        "UpdateAccountSettings",
        "UpdateChannel",
        "UpdateDeadLetterQueueRecordsVisibility",
        "UpdateMaxRecordSize",
        "UpdateQueue",
        "UpdateQueueRecordsVisibility",
        "UpdateStreamMode",
        "UpdateStreamRecordDistributionStrategy",
        "UpdateStreamWarmThroughput",
    }
    - OPERATIONS.keys()
)
