#!/usr/bin/env bash
# The compose demo without Docker, for machines that have none (like this project's): the two
# images' install lines in two fresh venvs built from the committed tree (the files the
# Dockerfiles COPY), then compose's commands: serve, health check, ingest, edge init / sync /
# search, SIGTERM. It checks the commands and packaging, not the images (no CUDA, no tini).
#   CORPUS_DIR=/path/to/scifact deploy/simulate-without-docker.sh [WORKDIR]
# CORPUS_DIR holds corpus.jsonl.gz (BEIR). Takes minutes (two venv installs); not part of the tests.
set -euo pipefail
: "${CORPUS_DIR:?set CORPUS_DIR to a folder holding corpus.jsonl.gz}"
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/embedstream-sim}
LIMIT=${LIMIT:-300}
rm -rf "$WORK" && mkdir -p "$WORK/src-server" "$WORK/src-edge"
cd "$WORK"
# Each image's build context: what its Dockerfile COPYs (the edge one has no server/).
git -C "$REPO" archive HEAD pyproject.toml README.md protos server edge_client deploy/grpc_health_check.py |
  tar -x -C src-server
git -C "$REPO" archive HEAD pyproject.toml README.md protos edge_client | tar -x -C src-edge

# Dockerfile.server's install lines (the CUDA wheel there; whatever torch==2.13.0 resolves to here).
python3 -m venv venv-server
(cd src-server && ../venv-server/bin/pip install -q torch==2.13.0 && ../venv-server/bin/pip install -q '.[server]')
# Dockerfile.edge's install line and its no-torch check.
python3 -m venv venv-edge
(cd src-edge && ../venv-edge/bin/pip install -q '.[edge]')
if venv-edge/bin/python -c "import torch" 2>/dev/null; then echo "edge venv has torch" >&2; exit 1; fi

free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
# compose.yaml's server environment, with free ports and a local data directory.
export EMBED_PORT=$PORT EMBED_METRICS_PORT=$METRICS_PORT EMBED_DATA_DIR=$WORK/data \
  EMBED_EDGE_ONNX_CACHE=$WORK/data/onnx-cache EMBED_MODEL=all-MiniLM-L6-v2 EMBED_DEVICE=auto \
  EMBED_GRACE_SECONDS=20 EMBED_LOG_LEVEL=INFO
S=$WORK/venv-server/bin
E=$WORK/venv-edge/bin
HEALTH="$S/python src-server/deploy/grpc_health_check.py"

started=$(date +%s)
"$S/embed-server" serve --host 0.0.0.0 >server.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true' EXIT
until $HEALTH 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || { tail -20 server.log; exit 1; }
  sleep 1 # a shell script has no health event to wait on; the tests never poll like this
done
echo "SERVING after $(($(date +%s) - started)) s"
echo "metrics: $(curl -s "localhost:$METRICS_PORT/metrics" | grep -c '^embed_') embed_* samples"

(zcat "$CORPUS_DIR/corpus.jsonl.gz" || true) | head -"$LIMIT" | gzip >corpus.jsonl.gz # zcat: SIGPIPE
"$S/embed-server" ingest corpus.jsonl.gz --collection demo --server "127.0.0.1:$PORT" 2>&1 | tail -1
"$E/edge-client" init --home edge-state --server "127.0.0.1:$PORT"
"$E/edge-client" sync --home edge-state --collection demo --no-progress
"$E/edge-client" search --home edge-state --collection demo --mode local --k 3 "vitamin D and bone density"
"$E/edge-client" search --home edge-state --collection demo --mode auto --k 3 "vitamin D and bone density"

stopping=$(date +%s)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
trap - EXIT
echo "server exit code $rc, $(($(date +%s) - stopping)) s after SIGTERM"
if $HEALTH 2>/dev/null; then echo "still serving after exit" >&2; exit 1; fi
exit "$rc"
