"""The gateway's operation registry: Kinesis operation name -> implementation.

``OPERATIONS`` holds everything streamd answers: stream administration (streams.py), records
(records.py) and enhanced fan-out (fanout.py). ``UNSUPPORTED`` lists the rest of the Kinesis API
(from botocore's service model at the time of writing): those are answered with an
InvalidArgumentException naming the operation, never a silent success. A name in neither set is
not a Kinesis operation at all: UnknownOperationException.
"""

from __future__ import annotations

from typing import Final

from .fanout import FANOUT_OPERATIONS
from .records import RECORD_OPERATIONS
from .streams import STREAM_OPERATIONS
from .types import Operation

OPERATIONS: Final[dict[str, Operation]] = {
    **STREAM_OPERATIONS,
    **RECORD_OPERATIONS,
    **FANOUT_OPERATIONS,
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
        # Enhanced fan-out names, while fanout.py does not answer them yet.
        "RegisterStreamConsumer",
        "DescribeStreamConsumer",
        "ListStreamConsumers",
        "DeregisterStreamConsumer",
        "SubscribeToShard",
    }
    - OPERATIONS.keys()
)
