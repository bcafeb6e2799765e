"""Reads a tidemark Parquet export back with pyarrow and prints, as JSON, what it holds per
date: rows, the sum of the `amount` field of the payloads, and the distinct merchants.
Used by tests/e2e/reindex.rs.

    parquet_export.py DIR
"""
import json
import sys

import pyarrow.dataset as ds


def main(path):
    table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
    out = {}
    for row in table.to_pylist():
        day = out.setdefault(str(row["date"]), {"rows": 0, "amount": 0.0, "merchants": set()})
        day["rows"] += 1
        day["amount"] += json.loads(row["_payload"]).get("amount", 0.0)
        day["merchants"].add(row["merchant_id"])
    columns = table.schema.names
    print(json.dumps({
        "columns": columns,
        "days": {d: {"rows": v["rows"], "amount": round(v["amount"], 6), "merchants": sorted(v["merchants"])}
                 for d, v in sorted(out.items())},
    }))


if __name__ == "__main__":
    main(sys.argv[1])
