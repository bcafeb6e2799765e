"""Runs SQL statements over Arrow Flight SQL with ADBC and prints every answer as JSON.

Used by tests/e2e/demo.rs: argv[1] is the URI, argv[2] a JSON list of statements. Timestamps
are printed as epoch milliseconds, so the Rust test compares numbers.
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa
import pyarrow.compute as pc


def rows(table):
    cols = []
    for col in table.columns:
        if pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("ms")), pa.int64())
        cols.append(col.to_pylist())
    return [list(r) for r in zip(*cols)]


def main(uri, statements):
    out = []
    with flight_sql.connect(uri) as conn:
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
                t = cur.fetch_arrow_table()
                out.append({"columns": t.column_names, "rows": rows(t)})
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
