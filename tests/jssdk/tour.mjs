// A tour of the Kinesis API with the AWS SDK for JavaScript v3 and its DEFAULT request handler
// (NodeHttp2Handler: HTTP/2 with prior knowledge to an http:// endpoint, one session per call).
// Run by tests/integration/test_kinesis_jssdk.py:
//   node tour.mjs   with KINESIS_ENDPOINT, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
// Every step checks its answer (node:assert); the last line on stdout is a JSON summary, and the
// exit code is 0 only if every step passed. NODE_PATH points at the SDK's install.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.JSSDK_DIR, "node_modules", "x.js"));
const K = require("@aws-sdk/client-kinesis");

const client = new K.KinesisClient({
  endpoint: process.env.KINESIS_ENDPOINT,
  region: process.env.AWS_REGION,
  credentials: {
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
  },
  maxAttempts: 1,
});
const summary = { steps: [] };
const name = `js-${Math.random().toString(16).slice(2, 10)}`;
const enc = new TextEncoder();
const dec = new TextDecoder();
const call = async (step, command) => {
  if (process.env.TOUR_TRACE) console.error(`-> ${step}`);
  const out = await client.send(command);
  summary.steps.push(step);
  return out;
};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitActive() {
  for (let i = 0; i < 300; i++) {
    const d = await client.send(new K.DescribeStreamSummaryCommand({ StreamName: name }));
    if (d.StreamDescriptionSummary.StreamStatus === "ACTIVE") return d.StreamDescriptionSummary;
    await sleep(50);
  }
  throw new Error(`${name} not ACTIVE`);
}

async function openShards() {
  const out = await client.send(new K.ListShardsCommand({ StreamName: name }));
  return out.Shards.filter((s) => s.SequenceNumberRange.EndingSequenceNumber === undefined);
}

async function readAll(iterator) {
  const records = [];
  for (let i = 0; i < 20 && iterator; i++) {
    const page = await client.send(new K.GetRecordsCommand({ ShardIterator: iterator }));
    records.push(...page.Records);
    iterator = page.NextShardIterator;
    if (page.Records.length === 0 && page.MillisBehindLatest === 0) break;
  }
  return records;
}

async function main() {
  await call("CreateStream", new K.CreateStreamCommand({ StreamName: name, ShardCount: 2 }));
  const { StreamARN: arn } = await waitActive();

  // Everything on shard 0 (hash key 0), so one shard holds a known order.
  const first = await call(
    "PutRecord",
    new K.PutRecordCommand({
      StreamName: name, Data: enc.encode("r0"), PartitionKey: "k", ExplicitHashKey: "0",
    }),
  );
  assert.equal(first.ShardId, "shardId-000000000000");
  const beforeBatch = new Date(Date.now() - 1);
  const batch = await call(
    "PutRecords",
    new K.PutRecordsCommand({
      StreamName: name,
      Records: [1, 2, 3, 4].map((i) => ({
        Data: enc.encode(`r${i}`), PartitionKey: `k${i}`, ExplicitHashKey: "0",
      })),
    }),
  );
  assert.equal(batch.FailedRecordCount, 0);
  assert.equal(batch.Records.length, 4);
  const seqs = [first.SequenceNumber, ...batch.Records.map((r) => r.SequenceNumber)];

  const shards = (await call("ListShards", new K.ListShardsCommand({ StreamName: name }))).Shards;
  assert.deepEqual(shards.map((s) => s.ShardId), ["shardId-000000000000", "shardId-000000000001"]);

  const iterators = {};
  const iterator = async (type, extra = {}) => {
    const out = await client.send(new K.GetShardIteratorCommand({
      StreamName: name, ShardId: "shardId-000000000000", ShardIteratorType: type, ...extra,
    }));
    iterators[type] = true;
    return out.ShardIterator;
  };
  const datas = (records) => records.map((r) => dec.decode(r.Data));
  assert.deepEqual(datas(await readAll(await iterator("TRIM_HORIZON"))), ["r0", "r1", "r2", "r3", "r4"]);
  summary.steps.push("GetRecords");
  assert.deepEqual(
    datas(await readAll(await iterator("AT_SEQUENCE_NUMBER", { StartingSequenceNumber: seqs[2] }))),
    ["r2", "r3", "r4"],
  );
  assert.deepEqual(
    datas(await readAll(await iterator("AFTER_SEQUENCE_NUMBER", { StartingSequenceNumber: seqs[2] }))),
    ["r3", "r4"],
  );
  const atTime = datas(await readAll(await iterator("AT_TIMESTAMP", { Timestamp: beforeBatch })));
  assert.deepEqual(atTime.slice(-4), ["r1", "r2", "r3", "r4"]);
  const latest = await iterator("LATEST");
  await client.send(new K.PutRecordCommand({
    StreamName: name, Data: enc.encode("r5"), PartitionKey: "k", ExplicitHashKey: "0",
  }));
  assert.deepEqual(datas(await readAll(latest)), ["r5"]);
  summary.iterator_types = Object.keys(iterators).sort();

  // Bodies larger than either side's first window (64 KiB): 5 x 100 KB records in one
  // PutRecords (~670 KB of JSON), read back in one GetRecords answer of the same size.
  const big = [0, 1, 2, 3, 4].map((i) => new Uint8Array(100_000).fill(65 + i));
  const bigPut = await client.send(new K.PutRecordsCommand({
    StreamName: name,
    Records: big.map((Data) => ({ Data, PartitionKey: "b", ExplicitHashKey: (2n ** 127n).toString() })),
  }));
  assert.equal(bigPut.FailedRecordCount, 0);
  const bigIterator = (await client.send(new K.GetShardIteratorCommand({
    StreamName: name, ShardId: "shardId-000000000001", ShardIteratorType: "TRIM_HORIZON",
  }))).ShardIterator;
  const bigPage = await client.send(new K.GetRecordsCommand({ ShardIterator: bigIterator }));
  assert.deepEqual(bigPage.Records.map((r) => [r.Data.length, r.Data[0]]), big.map((b) => [100_000, b[0]]));
  summary.large_bodies = true;

  await call("AddTagsToStream", new K.AddTagsToStreamCommand({ StreamName: name, Tags: { team: "js", env: "test" } }));
  let tags = await call("ListTagsForStream", new K.ListTagsForStreamCommand({ StreamName: name }));
  assert.deepEqual(tags.Tags.map((t) => `${t.Key}=${t.Value}`).sort(), ["env=test", "team=js"]);
  await call("RemoveTagsFromStream", new K.RemoveTagsFromStreamCommand({ StreamName: name, TagKeys: ["env"] }));
  tags = await client.send(new K.ListTagsForStreamCommand({ StreamName: name }));
  assert.deepEqual(tags.Tags.map((t) => t.Key), ["team"]);

  // Enhanced fan-out: SubscribeToShard's event stream over an HTTP/2 stream.
  const registered = await call(
    "RegisterStreamConsumer",
    new K.RegisterStreamConsumerCommand({ StreamARN: arn, ConsumerName: "js-consumer" }),
  );
  const consumerArn = registered.Consumer.ConsumerARN;
  for (let i = 0; i < 100; i++) {
    const d = await client.send(new K.DescribeStreamConsumerCommand({ ConsumerARN: consumerArn }));
    if (d.ConsumerDescription.ConsumerStatus === "ACTIVE") break;
    await sleep(50);
  }
  const sub = await call("SubscribeToShard", new K.SubscribeToShardCommand({
    ConsumerARN: consumerArn, ShardId: "shardId-000000000000", StartingPosition: { Type: "TRIM_HORIZON" },
  }));
  const got = [];
  let events = 0;
  let live = false;
  for await (const event of sub.EventStream) {
    if (process.env.TOUR_TRACE) console.error(`event ${JSON.stringify(event, (k, v) => (v instanceof Uint8Array ? dec.decode(v) : v))}`);
    assert.ok(event.SubscribeToShardEvent, `unexpected event ${JSON.stringify(Object.keys(event))}`);
    events += 1;
    const e = event.SubscribeToShardEvent;
    assert.ok(e.ContinuationSequenceNumber);
    assert.equal(typeof e.MillisBehindLatest, "number");
    got.push(...datas(e.Records));
    if (!live && got.length >= 6) {
      live = true;  // a record put while subscribed arrives on the open stream
      await client.send(new K.PutRecordCommand({
        StreamName: name, Data: enc.encode("r6"), PartitionKey: "k", ExplicitHashKey: "0",
      }));
      if (process.env.TOUR_TRACE) console.error("put r6 done");
    }
    if (got.length >= 7) break;  // leaving the loop resets the HTTP/2 stream
  }
  assert.deepEqual(got, ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]);
  summary.subscribe_events = events;
  summary.subscribe_records = got.length;
  await client.send(new K.DeregisterStreamConsumerCommand({ ConsumerARN: consumerArn }));

  // Resharding: split shard 0, merge the two open shards next to each other, then resize.
  await call("SplitShard", new K.SplitShardCommand({
    StreamName: name, ShardToSplit: "shardId-000000000000",
    NewStartingHashKey: (2n ** 126n).toString(),
  }));
  await waitActive();
  let open = await openShards();
  assert.equal(open.length, 3);
  open.sort((a, b) => (BigInt(a.HashKeyRange.StartingHashKey) < BigInt(b.HashKeyRange.StartingHashKey) ? -1 : 1));
  await call("MergeShards", new K.MergeShardsCommand({
    StreamName: name, ShardToMerge: open[0].ShardId, AdjacentShardToMerge: open[1].ShardId,
  }));
  await waitActive();
  assert.equal((await openShards()).length, 2);
  const resized = await call("UpdateShardCount", new K.UpdateShardCountCommand({
    StreamName: name, TargetShardCount: 4, ScalingType: "UNIFORM_SCALING",
  }));
  assert.equal(resized.TargetShardCount, 4);
  await waitActive();
  assert.equal((await openShards()).length, 4);

  // Errors come back typed, as the SDK parses them over HTTP/2 too.
  await assert.rejects(
    client.send(new K.DescribeStreamSummaryCommand({ StreamName: `${name}-missing` })),
    (err) => err.name === "ResourceNotFoundException" && err.$metadata.httpStatusCode === 400,
  );
  summary.steps.push("typed-error");

  await call("DeleteStream", new K.DeleteStreamCommand({ StreamName: name, EnforceConsumerDeletion: true }));
  const names = (await client.send(new K.ListStreamsCommand({}))).StreamNames;
  assert.ok(!names.includes(name));
  summary.ok = true;
  console.log(JSON.stringify(summary));
}

main().then(
  () => client.destroy(),
  (err) => {
    console.error(err);
    console.log(JSON.stringify({ ...summary, ok: false, error: String(err) }));
    client.destroy();
    process.exitCode = 1;
  },
);
