"""chaintwin's permissioned blockchain node (runs in Mininet hosts or on localhost).

Modules, one job each: crypto (ed25519 keys), tx, reconfig (the twin's signed protocol
switch), mempool, block (hash-chained blocks, certificates), ledger (SQLite WAL),
transport (asyncio TCP frames), consensus/ (the sans-I/O consensus core: every rule,
PBFT and BigFoot as registered rules objects; the twin runs it too), wire (frames <->
the core's messages), auth (ed25519 for the core), driver (the core on asyncio, TCP and
SQLite), node (wiring), client (workload), telemetry (JSONL + twin stream), sensor (the
per-block record the twin reads), config/genesis (typed files), cli.

A 4-node chain by hand:

    python -m nodes genesis --out net -n 4 --base-port 7000
    python -m nodes node --config net/node-v0.yaml &    # ... v1, v2, v3
    python -m nodes client --genesis net/genesis.yaml --key net/keys/client0.key \\
        --tps 500 --duration 10 --out txs.csv
    python -m nodes reconfig --key net/keys/twin.key --target 127.0.0.1:7000 --protocol bigfoot
    python -m nodes status --target 127.0.0.1:7001
"""
