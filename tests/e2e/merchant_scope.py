"""An adversarial SQL suite for a merchant-scoped key, through ADBC Flight SQL.

Publishes three merchants' events (m1: 3, m2: 50, m3: 700, each merchant with its own pages,
countries, amounts and users) and a datasource without a tenant dimension, then tries to reach
m2's and m3's rows, counts or names from m1's key through every SQL shape: filters, tautologies,
subqueries, UNION/INTERSECT/EXCEPT, joins, CTEs, window functions, grouping sets, sketches,
information_schema, system tables, EXPLAIN (ANALYZE), prepared statements and the Flight SQL
metadata calls. Every case must answer exactly what m1's own events give (computed here, in
plain Python, from the events this script sent) or be refused. Prints a JSON report; exits 1
if any case fails. Used by tests/e2e/merchant_scope.rs.

    merchant_scope.py HTTP_ADDR GRPC_URI ADMIN_TOKEN ANALYST_TOKEN MERCHANT_TOKEN
"""
import json
import re
import sys
import time
import urllib.request

import adbc_driver_flightsql.dbapi as flight_sql

MINUTE_MS = 60_000


def events(now_ms: int) -> list:
    """m1's three events (two in closed minutes, one now), then m2's and m3's."""
    out = []
    for i, (ago, page, amount) in enumerate([(30, "/m1/a", 1.0), (20, "/m1/b", 2.0), (0, "/m1/a", 3.0)]):
        out.append({"ts": now_ms - ago * MINUTE_MS, "merchant_id": "m1", "page": page, "country": "FR",
                    "amount": amount, "user_id": f"m1-user-{i}"})
    for i in range(50):
        out.append({"ts": now_ms - (1 + i % 29) * MINUTE_MS, "merchant_id": "m2", "page": f"/m2/secret-{i % 5}",
                    "country": "DE", "amount": 100.0, "user_id": f"m2-user-{i % 10}"})
    for i in range(700):
        out.append({"ts": now_ms - (1 + i % 29) * MINUTE_MS, "merchant_id": "m3", "page": f"/m3/secret-{i % 7}",
                    "country": "US", "amount": 1000.0, "user_id": f"m3-user-{i % 40}"})
    return out


def post(http: str, path: str, token: str, body: bytes) -> None:
    req = urllib.request.Request(f"http://{http}{path}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 200, resp.read()


def connect(uri: str, token: str):
    return flight_sql.connect(uri, db_kwargs={"adbc.flight.sql.authorization_header": f"Bearer {token}"})


def rows(conn, sql: str) -> list:
    with conn.cursor() as cur:
        cur.execute(sql)
        table = cur.fetch_arrow_table()
    return [tuple(r.values()) for r in table.to_pylist()]


def error_of(fn) -> str:
    try:
        fn()
    except Exception as e:  # the server's refusal is what the case checks
        return str(e)
    return ""


def main(http: str, uri: str, admin: str, analyst: str, merchant: str) -> None:
    now_ms = int(time.time() * 1000)
    sent = events(now_ms)
    post(http, "/v1/beacons/shop", admin, "\n".join(json.dumps(e) for e in sent).encode())
    internal = [{"ts": now_ms - 5 * MINUTE_MS, "team": "secret-team"} for _ in range(5)]
    post(http, "/v1/beacons/internal", admin, "\n".join(json.dumps(e) for e in internal).encode())

    # The oracle: m1's own events.
    mine = [e for e in sent if e["merchant_id"] == "m1"]
    count = len(mine)
    revenue = sum(e["amount"] for e in mine)
    pages = sorted({e["page"] for e in mine})
    per_page = [(p, sum(1 for e in mine if e["page"] == p)) for p in pages]
    minutes = len({e["ts"] // MINUTE_MS for e in mine})
    users = len({e["user_id"] for e in mine})

    # The data is all there for an analyst (the node's demo datasource `beacons` has a tenant
    # dimension too, so m1's key sees it, without rows), and part of it is in segments (the rest realtime).
    with connect(uri, analyst) as a:
        deadline = time.time() + 90
        while True:
            total = rows(a, 'SELECT COALESCE(SUM("count"), 0) FROM shop')[0][0]
            persisted = rows(a, "SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'shop'")[0][0]
            if total == len(sent) and persisted > 0:
                break
            assert time.time() < deadline, f"analyst sees {total} of {len(sent)} events, {persisted} in segments"
            time.sleep(0.3)
        analyst_view = {
            "merchants": rows(a, "SELECT DISTINCT merchant_id FROM shop ORDER BY 1"),
            "internal": rows(a, 'SELECT SUM("count") FROM internal'),
        }
    assert analyst_view == {"merchants": [("m1",), ("m2",), ("m3",)], "internal": [(5,)]}, analyst_view

    def not_found(name):
        return ("error", f"{name}' not found")

    # (name, SQL, expected): a list of rows, ("error", substring), or a check(rows) -> bool.
    cases = [
        ("total", 'SELECT SUM("count") FROM shop', [(count,)]),
        ("distinct merchants", "SELECT DISTINCT merchant_id FROM shop ORDER BY 1", [("m1",)]),
        ("per page", 'SELECT page, SUM("count") FROM shop GROUP BY page ORDER BY page', per_page),
        ("every row", "SELECT * FROM shop",
         lambda rs: len(rs) > 0 and all(r[1] == "m1" for r in rs)),
        ("other merchant", "SELECT SUM(\"count\") FROM shop WHERE merchant_id = 'm2'", [(None,)]),
        ("negation", "SELECT COALESCE(SUM(\"count\"), 0) FROM shop WHERE merchant_id <> 'm1'", [(0,)]),
        ("tautology", "SELECT SUM(\"count\") FROM shop WHERE merchant_id = 'm2' OR 1 = 1", [(count,)]),
        ("null trick", 'SELECT SUM("count") FROM shop WHERE merchant_id IS NULL OR merchant_id IS NOT NULL',
         [(count,)]),
        ("case folding", "SELECT COALESCE(SUM(\"count\"), 0) FROM shop WHERE upper(merchant_id) IN ('M2', 'M3')",
         [(0,)]),
        ("like", "SELECT COALESCE(SUM(\"count\"), 0) FROM shop WHERE page LIKE '%secret%' OR country <> 'FR'",
         [(0,)]),
        ("union all", 'SELECT merchant_id, SUM(n) FROM (SELECT merchant_id, "count" AS n FROM shop '
                      'UNION ALL SELECT merchant_id, "count" FROM shop) u GROUP BY 1', [("m1", 2 * count)]),
        ("intersect", "SELECT merchant_id FROM shop INTERSECT SELECT 'm2'", []),
        ("except", "SELECT x FROM (VALUES ('m2'), ('m3')) v(x) EXCEPT SELECT merchant_id FROM shop ORDER BY 1",
         [("m2",), ("m3",)]),
        ("cte", 'WITH everything AS (SELECT * FROM shop) '
                'SELECT COUNT(DISTINCT merchant_id), SUM("count") FROM everything', [(1, count)]),
        ("self join", "SELECT COUNT(*) FROM shop a JOIN shop b ON a.merchant_id <> b.merchant_id", [(0,)]),
        ("values join", "SELECT COUNT(*) FROM (VALUES ('m2'), ('m3')) v(m) JOIN shop s ON s.merchant_id = v.m",
         [(0,)]),
        ("in subquery", "SELECT COALESCE(SUM(\"count\"), 0) FROM shop "
                        "WHERE merchant_id IN (SELECT 'm2' UNION SELECT 'm3')", [(0,)]),
        ("exists", "SELECT COUNT(*) FROM (VALUES (1)) v(x) "
                   "WHERE EXISTS (SELECT 1 FROM shop WHERE merchant_id = 'm3')", [(0,)]),
        ("correlated subquery", 'SELECT s1.merchant_id, (SELECT SUM(s2."count") FROM shop s2 '
                                'WHERE s2.merchant_id = s1.merchant_id) FROM (SELECT DISTINCT merchant_id FROM shop) s1',
         [("m1", count)]),
        ("having", "SELECT merchant_id FROM shop GROUP BY merchant_id HAVING merchant_id IN ('m2', 'm3')", []),
        ("window", 'SELECT DISTINCT SUM("count") OVER () FROM shop', [(count,)]),
        ("rollup", 'SELECT merchant_id, SUM("count") FROM shop GROUP BY ROLLUP(merchant_id) '
                   'ORDER BY merchant_id NULLS LAST', [("m1", count), (None, count)]),
        ("distinct users", "SELECT CAST(APPROX_COUNT_DISTINCT_DS_HLL(users) AS BIGINT) FROM shop", [(users,)]),
        ("revenue", "SELECT SUM(revenue) FROM shop", [(revenue,)]),
        ("min max", "SELECT MIN(page), MAX(page), MIN(country), MAX(country) FROM shop",
         [(pages[0], pages[-1], "FR", "FR")]),
        ("all of time", "SELECT SUM(\"count\") FROM shop WHERE __time >= TIMESTAMP '1970-01-01T00:00:00Z'",
         [(count,)]),
        ("minutes", "SELECT COUNT(DISTINCT date_trunc('minute', __time)) FROM shop", [(minutes,)]),
        ("information_schema tables", "SELECT table_schema, table_name FROM information_schema.tables "
                                      "WHERE table_schema <> 'information_schema' ORDER BY 1, 2",
         [("public", "beacons"), ("public", "shop")]),
        ("information_schema columns", "SELECT COUNT(*) FROM information_schema.columns "
                                       "WHERE table_name = 'internal' OR table_schema = 'sys'", [(0,)]),
        ("information_schema schemata", "SELECT schema_name FROM information_schema.schemata ORDER BY 1",
         [("public",)]),
        ("show tables", "SHOW TABLES",
         lambda rs: sorted(r[2] for r in rs if r[1] != "information_schema") == ["beacons", "shop"]),
        ("demo datasource", 'SELECT COALESCE(SUM("count"), 0) FROM beacons', [(0,)]),
        ("sys.segments", "SELECT * FROM sys.segments", not_found("sys.segments")),
        ("sys.audit", "SELECT * FROM sys.audit", not_found("sys.audit")),
        ("sys.rejects", "SELECT * FROM sys.rejects", not_found("sys.rejects")),
        ("qualified sys", "SELECT * FROM tidemark.sys.datasources", not_found("tidemark.sys.datasources")),
        ("untenanted datasource", "SELECT * FROM internal", not_found("internal")),
        ("qualified untenanted", "SELECT * FROM tidemark.public.internal", not_found("tidemark.public.internal")),
        ("join untenanted", "SELECT COUNT(*) FROM shop CROSS JOIN internal", not_found("internal")),
    ]

    report = {"cases": 0, "failures": []}

    def check(name, got, expected):
        report["cases"] += 1
        if isinstance(expected, tuple) and expected and expected[0] == "error":
            ok = isinstance(got, str) and expected[1] in got
        elif callable(expected):
            try:
                ok = bool(expected(got))
            except Exception:  # an error text where rows were expected
                ok = False
        else:
            ok = got == expected
        if not ok:
            report["failures"].append({"case": name, "got": repr(got), "expected": repr(expected)})

    with connect(uri, merchant) as conn:
        for name, sql, expected in cases:
            try:
                got = rows(conn, sql)
            except Exception as e:  # refusals are answers too
                got = str(e)
            check(name, got, expected)

        # EXPLAIN shows only the scope's segments and rows: at most m1's three rolled-up rows.
        plan = "\n".join(str(r[-1]) for r in rows(conn, "EXPLAIN SELECT * FROM shop"))
        seg = re.search(r"segments=(\d+)/(\d+).*segment_rows=(\d+)/(\d+), realtime_rows=(\d+)", plan)
        check("explain", plan, lambda _: bool(seg) and int(seg.group(2)) <= minutes
              and 1 <= int(seg.group(4)) + int(seg.group(5)) <= count)
        analyzed = "\n".join(str(r[-1]) for r in rows(conn, 'EXPLAIN ANALYZE SELECT SUM("count") FROM shop'))
        scan = re.search(r"segment_rows=(\d+)/(\d+), realtime_rows=(\d+)", analyzed)
        flowing = [int(n) for n in re.findall(r"output_rows=(\d+)", analyzed)]
        check("explain analyze", analyzed, lambda _: bool(scan) and 1 <= int(scan.group(2)) + int(scan.group(3)) <= count
              and all(n <= count for n in flowing))

        # A prepared statement runs as its caller.
        with conn.cursor() as cur:
            cur.adbc_prepare('SELECT SUM("count") FROM shop')
            cur.execute('SELECT SUM("count") FROM shop')
            check("prepared statement", [tuple(r.values()) for r in cur.fetch_arrow_table().to_pylist()], [(count,)])

        # Flight SQL metadata: the datasource only, no sys schema, no untenanted table.
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        listed = sorted((s["db_schema_name"], t["table_name"]) for c in objects for s in c["catalog_db_schemas"] or []
                        for t in s["db_schema_tables"] or [])
        check("get objects", listed, [("public", "beacons"), ("public", "shop")])
        check("table schema of untenanted", error_of(lambda: conn.adbc_get_table_schema("internal")) or None,
              ("error", ""))

    print(json.dumps(report))
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main(*sys.argv[1:6])
