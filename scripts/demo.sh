#!/usr/bin/env bash
# The main job without Docker: the exporter process, fed by the demo workflows through the
# SDK's remote sink. KEEP_SERVING=1 keeps both running (the demo on a loop) until Ctrl-C.
set -euo pipefail
BIN=${BIN:-.venv/bin}
ADDR=${PERSONA_EXPORTER_DEMO_ADDRESS:-127.0.0.1:9464}
CONFIG=exporter/persona_exporter/default_config.yaml

# Its own session: Ctrl-C in the terminal reaches the demo only, which then delivers its last
# events before the exit trap stops the exporter.
setsid "$BIN/persona-exporter" serve --web.listen-address "$ADDR" --config.file "$CONFIG" &
exporter=$!
trap 'kill -TERM "$exporter" 2>/dev/null; wait "$exporter" 2>/dev/null || true' EXIT

"$BIN/python" - "$ADDR" <<'PY'
import sys, time, urllib.request
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://{sys.argv[1]}/healthz", timeout=1)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(f"the exporter did not come up on {sys.argv[1]} (is the port in use? "
         "set PERSONA_EXPORTER_DEMO_ADDRESS=127.0.0.1:PORT)")
PY

if [ "${KEEP_SERVING:-0}" = 1 ]; then
  echo "Exporter on http://$ADDR/metrics, fed by the demo on a loop; Ctrl-C to stop."
  "$BIN/persona-exporter" demo --exporter-url "http://$ADDR" --iterations 0
  exit 0
fi

"$BIN/persona-exporter" demo --exporter-url "http://$ADDR"
echo
echo "The exporter at http://$ADDR/metrics holds the demo's events now, for example:"
"$BIN/python" - "$ADDR" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
lines = [l for l in text.splitlines() if l.startswith(("persona_llm_requests_total{",
                                                      "persona_workflow_runs_total{"))]
print("\n".join(l for l in lines if not l.endswith(" 0.0")))
PY
