"""Flight SQL callers with and without API keys, through ADBC: prints, per case, the query's
answer or the error the server gave, as JSON. Used by tests/e2e/access.rs.

    adbc_auth.py URI ANALYST_TOKEN PUBLISHER_TOKEN
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql

QUERY = "SELECT COUNT(*) AS n FROM sys.audit"


def run(uri: str, db_kwargs: dict) -> dict:
    try:
        with flight_sql.connect(uri, db_kwargs=db_kwargs) as conn:
            with conn.cursor() as cur:
                cur.execute(QUERY)
                return {"ok": int(cur.fetch_arrow_table().column("n").to_pylist()[0])}
    except Exception as e:  # the server's refusal is what the test checks
        return {"error": str(e)}


def main(uri: str, analyst: str, publisher: str) -> None:
    header = "adbc.flight.sql.authorization_header"
    out = {
        "bearer_analyst": run(uri, {header: f"Bearer {analyst}"}),
        "basic_analyst": run(uri, {"username": "analyst", "password": analyst}),
        "bearer_publisher": run(uri, {header: f"Bearer {publisher}"}),
        "no_key": run(uri, {}),
        "wrong_key": run(uri, {header: "Bearer tmk_000000000000_" + "0" * 64}),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
