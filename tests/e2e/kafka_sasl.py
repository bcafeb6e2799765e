"""Kafka clients logging in with tidemark API keys (SASL), driven by tests/e2e/publishers.rs.

    kafka_sasl.py BOOTSTRAP PUBLISHER_ID PUBLISHER_TOKEN ANALYST_ID ANALYST_TOKEN

Prints one JSON object: what each client saw. confluent-kafka (librdkafka) logs in with
SCRAM-SHA-256 (username = key id, password = the key), kafka-python with PLAIN (loopback).
"""
import json
import sys
import time

TS = int(time.time() * 1000) - 60_000


def beacon(**extra):
    b = {"ts": TS, "merchant_id": "m1", "page": "/kafka"}
    b.update(extra)
    return json.dumps(b).encode()


def confluent_scram(boot, user, password, topic, values):
    """Produces `values`; returns per-record delivery errors (None = delivered)."""
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": boot,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
        "acks": "all",
        "enable.idempotence": True,
        "message.timeout.ms": 15000,
    })
    results = [None] * len(values)
    done = [False] * len(values)

    def report(i):
        def cb(err, _msg):
            results[i] = None if err is None else err.str()
            done[i] = True
        return cb

    for i, v in enumerate(values):
        p.produce(topic, value=v, key=b"m1", on_delivery=report(i))
    p.flush(20)
    return [r if d else "not delivered in time" for r, d in zip(results, done)]


def kafka_python_plain(boot, password, topic, values):
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=boot, security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
                      sasl_plain_username="anyone", sasl_plain_password=password, acks="all",
                      request_timeout_ms=10000, api_version=(2, 5))
    try:
        out = []
        for v in values:
            try:
                p.send(topic, value=v, key=b"m1").get(timeout=15)
                out.append(None)
            except Exception as e:  # the broker's refusal is what the test checks
                out.append(type(e).__name__ + ": " + str(e))
        return out
    finally:
        p.close(timeout=5)


def kafka_python_login_error(boot, mechanism, user, password):
    from kafka import KafkaProducer

    try:
        kw = {"sasl_plain_username": user, "sasl_plain_password": password}
        p = KafkaProducer(bootstrap_servers=boot, security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                          api_version=(2, 5), request_timeout_ms=5000, max_block_ms=5000, **kw)
        p.send("shop", value=beacon()).get(timeout=5)
        p.close(timeout=2)
        return None
    except Exception as e:
        return type(e).__name__ + ": " + str(e)


def no_login(boot):
    """A client without SASL on a node with keys gets nowhere (the broker closes on it)."""
    from kafka import KafkaProducer

    try:
        p = KafkaProducer(bootstrap_servers=boot, max_block_ms=3000, api_version=(2, 5))
        p.send("shop", value=beacon()).get(timeout=5)
        p.close(timeout=2)
        return None
    except Exception as e:
        return type(e).__name__ + ": " + str(e)


def consume_scram(boot, user, password, topic, want):
    from confluent_kafka import Consumer

    c = Consumer({
        "bootstrap.servers": boot,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
        "group.id": "sasl-test",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([topic])
    got = []
    deadline = time.time() + 30
    while len(got) < want and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(json.loads(m.value()))
    c.close()
    return got


def merchant_metadata(boot, user, password):
    """A merchant reader's key logs in but may not list topics: the broker closes on Metadata."""
    from kafka import KafkaAdminClient

    try:
        a = KafkaAdminClient(bootstrap_servers=boot, security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
                             sasl_plain_username=user, sasl_plain_password=password, api_version=(2, 5),
                             request_timeout_ms=5000)
        topics = a.list_topics()
        a.close()
        return {"topics": sorted(topics)}
    except Exception as e:
        return {"error": type(e).__name__ + ": " + str(e)}


def main(boot, pub_id, pub_token, analyst_id, analyst_token, merchant_id, merchant_token):
    out = {
        # SCRAM: a permitted record, one with a tag outside the grant, then a topic outside it.
        "scram_shop": confluent_scram(boot, pub_id, pub_token, "shop", [beacon(), beacon(country="FR")]),
        "scram_other": confluent_scram(boot, pub_id, pub_token, "other", [beacon()]),
        "plain_shop": kafka_python_plain(boot, pub_token, "shop", [beacon(page="/plain")]),
        "wrong_password": kafka_python_login_error(boot, "SCRAM-SHA-256", pub_id, pub_token[:-4] + "0000"),
        "plain_wrong_key": kafka_python_login_error(boot, "PLAIN", "x", "tmk_000000000000_" + "0" * 64),
    }
    out["no_login"] = no_login(boot)
    out["consumed"] = consume_scram(boot, analyst_id, analyst_token, "shop", 3)
    out["merchant_metadata"] = merchant_metadata(boot, merchant_id, merchant_token)
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:8])
