"""Real Kafka clients against a tidemark node, driven by tests/e2e/kafka.rs.

Subcommands (all print one JSON object on stdout):
  produce CLIENT CODEC BOOTSTRAP TOPIC FILE   records from FILE (key TAB value TAB timestamp per line),
                                              acks=all, idempotence on, each with header seq=<line>
  produce_defaults CLIENT BOOTSTRAP TOPIC FILE  the same with every client setting left at its default
  consume CLIENT BOOTSTRAP TOPIC COUNT OUT [GROUP]
                                              read COUNT records (from offset 0, or from the group's
                                              committed offsets) into OUT as JSON lines; with GROUP,
                                              commit and leave
  groups BOOTSTRAP                            list groups and their committed offsets (admin API)
  sql GRPC_URI QUERY                          one row over Flight SQL (ADBC)
  transactional BOOTSTRAP                     a transactional producer must be refused, not hang
  group_pair BOOTSTRAP TOPIC COUNT            two consumers in one group split the partitions
  groups_admin BOOTSTRAP TOPIC                OffsetDelete and DeleteGroups
  admin BOOTSTRAP SPEC_JSON                   CreateTopics/DescribeConfigs/CreatePartitions/DeleteTopics
  offsets_for_times BOOTSTRAP TOPIC TS        ListOffsets by time, per partition
  produce_until BOOTSTRAP TOPIC STOPFILE       an idempotent acks=all producer (librdkafka) sending
                                              beacons for merchants kafka-0..9 until STOPFILE exists,
                                              then flushing; prints delivered counts per merchant
CLIENT is confluent (librdkafka), kafka-python or aiokafka.
"""

import asyncio
import json
import sys
import time


def read_records(path):
    out = []
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            key, value, ts = line.rstrip(b"\n").split(b"\t")
            out.append((key, value, int(ts), str(i).encode()))
    return out


def produce_confluent(codec, boot, topic, records):
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": boot,
        "acks": "all",
        "enable.idempotence": True,
        "compression.type": codec,
        "linger.ms": 20,
        # Java's (and tidemark's HTTP) partitioner, so the test can check partitions.
        "partitioner": "murmur2_random",
    })
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(str(err))

    for key, value, ts, seq in records:
        while True:
            try:
                p.produce(topic, key=key, value=value, timestamp=ts, headers=[("seq", seq)], on_delivery=done)
                break
            except BufferError:
                p.poll(0.1)
    left = p.flush(60)
    if left or errors:
        raise RuntimeError(f"{left} undelivered, errors: {errors[:5]}")


def produce_kafka_python(codec, boot, topic, records):
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=boot,
        acks="all",
        enable_idempotence=True,
        compression_type=None if codec == "none" else codec,
        linger_ms=20,
    )
    futures = [p.send(topic, key=k, value=v, timestamp_ms=ts, headers=[("seq", s)]) for k, v, ts, s in records]
    for f in futures:
        f.get(timeout=60)
    p.close()


def produce_aiokafka(codec, boot, topic, records):
    from aiokafka import AIOKafkaProducer

    async def run():
        p = AIOKafkaProducer(
            bootstrap_servers=boot,
            acks="all",
            enable_idempotence=True,
            compression_type=None if codec == "none" else codec,
            linger_ms=20,
        )
        await p.start()
        try:
            futures = [await p.send(topic, key=k, value=v, timestamp_ms=ts, headers=[("seq", s)]) for k, v, ts, s in records]
            for f in futures:
                await f
        finally:
            await p.stop()

    asyncio.run(run())


def produce_defaults(client, boot, topic, records):
    """Each client exactly as it comes: no acks, idempotence, batching or partitioner settings."""
    if client == "confluent":
        from confluent_kafka import Producer

        p = Producer({"bootstrap.servers": boot})
        for k, v, _, _ in records:
            p.produce(topic, key=k, value=v)
        if p.flush(60):
            raise RuntimeError("undelivered records")
    elif client == "kafka-python":
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=boot)
        for f in [p.send(topic, key=k, value=v) for k, v, _, _ in records]:
            f.get(timeout=60)
        p.close()
    else:
        from aiokafka import AIOKafkaProducer

        async def run():
            p = AIOKafkaProducer(bootstrap_servers=boot)
            await p.start()
            try:
                for f in [await p.send(topic, key=k, value=v) for k, v, _, _ in records]:
                    await f
            finally:
                await p.stop()

        asyncio.run(run())


def row(partition, offset, key, value, headers, ts):
    return json.dumps({
        "partition": partition,
        "offset": offset,
        "key": key.decode() if key is not None else None,
        "value": value.decode() if value is not None else None,
        "headers": [[k, v.decode() if v is not None else None] for k, v in (headers or [])],
        "timestamp": ts,
    })


def consume_confluent(boot, topic, count, out, group):
    from confluent_kafka import Consumer, TopicPartition

    conf = {
        "bootstrap.servers": boot,
        "group.id": group or f"probe-{time.time()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    c = Consumer(conf)
    if group:
        c.subscribe([topic])
    else:
        meta = c.list_topics(topic, timeout=10)
        parts = meta.topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
    got = 0
    deadline = time.time() + 120
    with open(out, "w") as f:
        while got < count and time.time() < deadline:
            for m in c.consume(num_messages=1000, timeout=1.0):
                if m.error():
                    raise RuntimeError(str(m.error()))
                f.write(row(m.partition(), m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]) + "\n")
                got += 1
    if group:
        c.commit(asynchronous=False)
    c.close()
    return got


def consume_kafka_python(boot, topic, count, out, group):
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        bootstrap_servers=boot,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=5000,
    )
    if group:
        c.subscribe([topic])
    else:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(parts)
        c.seek_to_beginning()
    got = 0
    deadline = time.time() + 120
    with open(out, "w") as f:
        while got < count and time.time() < deadline:
            batch = c.poll(timeout_ms=1000, max_records=1000)
            for records in batch.values():
                for m in records:
                    f.write(row(m.partition, m.offset, m.key, m.value, m.headers, m.timestamp) + "\n")
                    got += 1
    if group:
        c.commit()
    c.close()
    return got


def consume_aiokafka(boot, topic, count, out, group):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run():
        c = AIOKafkaConsumer(bootstrap_servers=boot, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        got = 0
        try:
            if group:
                c.subscribe([topic])
            else:
                # An unsubscribed consumer has no metadata for the topic: ask for every topic's.
                cluster = await c._client.fetch_all_metadata()
                parts = [TopicPartition(topic, p) for p in sorted(cluster.partitions_for_topic(topic) or [])]
                c.assign(parts)
                await c.seek_to_beginning()
            deadline = time.time() + 120
            with open(out, "w") as f:
                while got < count and time.time() < deadline:
                    batch = await c.getmany(timeout_ms=1000, max_records=1000)
                    for records in batch.values():
                        for m in records:
                            f.write(row(m.partition, m.offset, m.key, m.value, m.headers, m.timestamp) + "\n")
                            got += 1
            if group:
                await c.commit()
        finally:
            await c.stop()
        return got

    return asyncio.run(run())


def groups(boot):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=boot)
    out = {}
    # kafka-python 3: list_groups() gives dicts of the ListGroups response fields.
    names = [g["group_id"] for g in admin.list_groups()]
    described = {gid: d.get("group_state") for gid, d in admin.describe_groups(names).items()} if names else {}
    offsets = admin.list_group_offsets({name: None for name in names}) if names else {}
    for name in names:
        out[name] = {f"{tp.topic}/{tp.partition}": meta.offset for tp, meta in offsets.get(name, {}).items()}
        out[name]["__state"] = described.get(name)
    admin.close()
    return out


def group_pair(boot, topic, count):
    """Two kafka-python consumers in one group split the partitions; once the group is stable,
    COUNT records are produced and the pair must read each exactly once.

    Each phase waits for what it needs with its own deadline and says which one ran out (a
    loaded machine makes rebalances slow, not wrong); a consumer thread that fails reports why.
    """
    import threading

    from confluent_kafka import Producer
    from kafka import KafkaConsumer

    consumers = [
        KafkaConsumer(topic, bootstrap_servers=boot, group_id="g_pair", auto_offset_reset="earliest",
                      enable_auto_commit=False, client_id=f"pair-{i}",
                      session_timeout_ms=30000, heartbeat_interval_ms=1000)
        for i in range(2)
    ]
    got = [[], []]
    errors = []
    lock = threading.Lock()
    stop = threading.Event()

    def run(i):
        try:
            while not stop.is_set():
                for records in consumers[i].poll(timeout_ms=200).values():
                    with lock:
                        got[i].extend((m.partition, m.offset) for m in records)
        except BaseException as e:  # reported to the test, not lost on a thread's stderr
            errors.append(f"pair-{i}: {e!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()

    def finish(out):
        stop.set()
        for t in threads:
            t.join()
        for c in consumers:
            c.close()
        out["errors"] = errors
        return out

    started = time.time()
    while True:
        a = [set(tp.partition for tp in c.assignment()) for c in consumers]
        if all(a) and not (a[0] & a[1]) and len(a[0] | a[1]) == 3:
            break
        if errors or time.time() - started > 180:
            return finish({"split": False, "assignments": [sorted(x) for x in a],
                           "waited_s": round(time.time() - started, 1)})
        time.sleep(0.2)
    # The split that passed the check, not a second read of it.
    assignments = [sorted(x) for x in a]
    split_s = round(time.time() - started, 1)
    p = Producer({"bootstrap.servers": boot, "acks": "all", "enable.idempotence": True, "partitioner": "murmur2_random"})
    for i in range(count):
        p.produce(topic, key=f"m{i % 97}".encode(), value=json.dumps({"ts": int(time.time() * 1000), "merchant_id": f"m{i % 97}"}).encode())
    undelivered = p.flush(60)
    read_by = time.time() + 120
    while time.time() < read_by and len(got[0]) + len(got[1]) < count and not errors:
        time.sleep(0.1)
    every = got[0] + got[1]
    return finish({"split": True, "split_s": split_s, "assignments": assignments, "undelivered": undelivered,
                   "read_timed_out": len(every) < count and time.time() >= read_by,
                   "read": [len(g) for g in got], "distinct": len(set(every)), "total": len(every)})


def groups_admin(boot, topic):
    """OffsetDelete and DeleteGroups through kafka-python's admin client."""
    from kafka import KafkaAdminClient, TopicPartition

    a = KafkaAdminClient(bootstrap_servers=boot)
    out = {}
    a.delete_group_offsets("g_confluent", [TopicPartition(topic, 0)])
    left = a.list_group_offsets({"g_confluent": None}).get("g_confluent", {})
    out["g_confluent_partitions_after_offset_delete"] = sorted(tp.partition for tp in left)
    a.delete_groups(["g_kafka_python"])
    out["groups_after_delete"] = sorted(g["group_id"] for g in a.list_groups())
    # Per-group errors come back in the result, not as exceptions.
    out["delete_unknown"] = repr(a.delete_groups(["no_such_group"]))
    a.close()
    return out


def admin(boot, spec_json):
    """Topic administration with kafka-python's admin client; returns what each step answered."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    a = KafkaAdminClient(bootstrap_servers=boot)
    out = {}

    def attempt(name, fn):
        try:
            r = fn()
            out[name] = {"ok": True, "result": repr(r)[:500]}
        except Exception as e:  # the error the client raises is what the test checks
            out[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800]}

    attempt("create_without_spec", lambda: a.create_topics([NewTopic("k_admin_bare", 3, 1)]))
    attempt("create", lambda: a.create_topics([NewTopic("k_admin", 2, 1, topic_configs={"tidemark.spec": spec_json})]))
    attempt("create_again", lambda: a.create_topics([NewTopic("k_admin", 2, 1, topic_configs={"tidemark.spec": spec_json})]))
    configs = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "k_admin")])
    out["configs"] = repr(configs)[:4000]
    from confluent_kafka.admin import AdminClient, ConfigResource as CR

    confluent_admin = AdminClient({"bootstrap.servers": boot})  # must outlive its futures
    futures = confluent_admin.describe_configs([CR("topic", "k_admin")])
    out["confluent_configs"] = {k: e.value for f in futures.values() for k, e in f.result(10).items()}
    attempt("grow", lambda: a.create_partitions({"k_admin": NewPartitions(4)}))
    attempt("shrink", lambda: a.create_partitions({"k_admin": NewPartitions(1)}))
    out["partitions_after_grow"] = len(a.describe_topics(["k_admin"])[0]["partitions"])
    attempt("delete", lambda: a.delete_topics(["k_admin"]))
    out["topics_after_delete"] = sorted(a.list_topics())
    a.close()
    return out


def offsets_for_times(boot, topic, ts):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": boot, "group.id": "offsets-for-times"})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    found = c.offsets_for_times([TopicPartition(topic, p, ts) for p in parts], timeout=10)
    c.close()
    return {str(tp.partition): tp.offset for tp in found}


def transactional(boot):
    from confluent_kafka import KafkaException, Producer

    p = Producer({"bootstrap.servers": boot, "transactional.id": "tx-1", "transaction.timeout.ms": 10000})
    t = time.time()
    try:
        p.init_transactions(15)
    except KafkaException as e:
        return {"refused": True, "seconds": round(time.time() - t, 2), "error": str(e.args[0])}
    return {"refused": False}


def produce_until(boot, topic, stopfile):
    import os

    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": boot,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 5,
        # Ride out leader failovers: the idempotent producer retries with the same sequence.
        "message.timeout.ms": 300000,
        "compression.type": "lz4",
    })
    delivered = {}
    errors = []
    # When (epoch ms) and where delivery failed: the first and last failure per (error, partition).
    failures = {}

    def done(err, msg):
        if err is not None:
            errors.append(str(err))
            key = f"{err.name()} partition {msg.partition()}"
            now = int(time.time() * 1000)
            first, _, n = failures.get(key, (now, now, 0))
            failures[key] = (first, now, n + 1)
        else:
            m = json.loads(msg.value())["merchant_id"]
            delivered[m] = delivered.get(m, 0) + 1

    produced = 0
    while not os.path.exists(stopfile):
        now = int(time.time() * 1000)
        for _ in range(50):
            value = json.dumps({"ts": now, "merchant_id": f"kafka-{produced % 10}", "user_id": f"u{produced % 97}",
                                "latency_ms": 1.0, "amount": 1.0})
            while True:
                try:
                    p.produce(topic, value=value.encode(), on_delivery=done)
                    break
                except BufferError:
                    p.poll(0.1)
            produced += 1
        p.poll(0.05)
    left = p.flush(240)
    return {"produced": produced, "undelivered": left, "errors": errors[:5], "error_count": len(errors),
            "failures": {k: {"first": f, "last": l, "count": n} for k, (f, l, n) in failures.items()},
            "delivered": delivered}


def main():
    cmd = sys.argv[1]
    if cmd == "produce":
        client, codec, boot, topic, path = sys.argv[2:7]
        records = read_records(path)
        t = time.time()
        {"confluent": produce_confluent, "kafka-python": produce_kafka_python, "aiokafka": produce_aiokafka}[client](
            codec, boot, topic, records
        )
        print(json.dumps({"produced": len(records), "seconds": round(time.time() - t, 3)}))
    elif cmd == "produce_defaults":
        client, boot, topic, path = sys.argv[2:6]
        records = read_records(path)
        produce_defaults(client, boot, topic, records)
        print(json.dumps({"produced": len(records)}))
    elif cmd == "consume":
        client, boot, topic, count, out = sys.argv[2:7]
        group = sys.argv[7] if len(sys.argv) > 7 else None
        fn = {"confluent": consume_confluent, "kafka-python": consume_kafka_python, "aiokafka": consume_aiokafka}[client]
        print(json.dumps({"consumed": fn(boot, topic, int(count), out, group)}))
    elif cmd == "groups":
        print(json.dumps(groups(sys.argv[2])))
    elif cmd == "sql":
        import adbc_driver_flightsql.dbapi as flight_sql

        with flight_sql.connect(sys.argv[2]) as conn, conn.cursor() as cur:
            cur.execute(sys.argv[3])
            table = cur.fetch_arrow_table()
            print(json.dumps({k: v[0] for k, v in table.to_pydict().items()}))
    elif cmd == "group_pair":
        print(json.dumps(group_pair(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    elif cmd == "groups_admin":
        print(json.dumps(groups_admin(sys.argv[2], sys.argv[3])))
    elif cmd == "admin":
        print(json.dumps(admin(sys.argv[2], sys.argv[3])))
    elif cmd == "offsets_for_times":
        print(json.dumps(offsets_for_times(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    elif cmd == "produce_until":
        print(json.dumps(produce_until(sys.argv[2], sys.argv[3], sys.argv[4])))
    elif cmd == "transactional":
        print(json.dumps(transactional(sys.argv[2])))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
