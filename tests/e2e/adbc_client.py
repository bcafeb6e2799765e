"""Queries tidemark over Arrow Flight SQL with ADBC and prints what it read as JSON.

Used by tests/e2e/flight_adbc.rs; the Rust test computes the exact answers and compares.
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql


def main(uri: str) -> None:
    out = {}
    with flight_sql.connect(uri) as conn:
        with conn.cursor() as cur:
            cur.execute('SELECT country, SUM("count") AS c FROM beacons GROUP BY country ORDER BY country')
            table = cur.fetch_arrow_table()
            out["per_country"] = {str(k): int(v) for k, v in zip(table.column("country").to_pylist(), table.column("c").to_pylist())}

            # A prepared statement, executed twice.
            cur.adbc_prepare('SELECT SUM("count") AS c FROM beacons')
            cur.execute('SELECT SUM("count") AS c FROM beacons')
            out["total_prepared"] = int(cur.fetch_arrow_table().column("c").to_pylist()[0])

            cur.execute("SELECT SUM(\"count\") AS c FROM beacons WHERE event = 'purchase'")
            out["purchases"] = int(cur.fetch_arrow_table().column("c").to_pylist()[0])

        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = []
        for catalog in objects:
            for schema in catalog.get("catalog_db_schemas") or []:
                for t in schema.get("db_schema_tables") or []:
                    tables.append(f'{schema["db_schema_name"]}.{t["table_name"]}')
        out["tables"] = sorted(tables)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
