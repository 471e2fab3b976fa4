#!/usr/bin/env bash
# Build the Dockerfile with podman and run it for real: limits, readiness, a prediction on each
# tier, the CPU limit seen inside (torch threads), SIGTERM and a clean exit. Prints the image size.
set -euo pipefail
source "$(dirname "$0")/podman-env.sh"
IMAGE=localhost/lcs-serve:test
NAME=lcs-image-test-$$
PORT=${PORT:-18080}
cleanup() { podman rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

t0=$(date +%s)
ensure_base_image
echo "base image ready ($(( $(date +%s) - t0 )) s)"
# pip inside the build needs the host's CA bundle; the CPU torch wheel comes from the local
# wheel directory (PyPI's torch for x86_64 is the CUDA build).
podman build --format docker --layers -t "$IMAGE" \
  -v /etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro \
  -v /opt/wheels:/wheels:ro \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_FIND_LINKS=/wheels \
  --build-arg PIP_CA=/run/host-ca.crt \
  "$ROOT" >"$ROOT/build/image-build.log" 2>&1 || { tail -30 "$ROOT/build/image-build.log"; exit 1; }
echo "image built ($(( $(date +%s) - t0 )) s); size: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

podman run -d --name "$NAME" --log-level=fatal --cpus 1 --memory 1g --read-only --tmpfs /tmp \
  -e LCS_OPERATOR_TOKEN=test-token -p "127.0.0.1:$PORT:8000" "$IMAGE" >/dev/null
for i in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] || { podman logs "$NAME"; exit 1; }
  sleep 1
  [ "$i" = 120 ] && { echo "not ready after 120 s"; podman logs "$NAME" | tail -20; exit 1; }
done
echo "ready"
"$ROOT/.venv/bin/python" - "$PORT" <<'PY'
import sys, time, httpx
from tests.helpers import digits, encode
url = f"http://127.0.0.1:{sys.argv[1]}"
arr, labels = digits(1)
r = httpx.post(url + "/predict", content=encode(arr[0]), headers={"content-type": "image/png"})
assert r.status_code == 200, r.text
assert r.json()["predictions"][0]["index"] == labels[0], r.json()
metrics = httpx.get(url + "/metrics").text
assert "lcs_torch_threads 1.0" in metrics, [l for l in metrics.splitlines() if "threads" in l]
assert httpx.put(url + "/level", json={"mode": "fixed", "gamma": 0.5}).status_code == 401
print("prediction ok; torch threads inside = 1 (the --cpus 1 limit)")
# Tier 2 inside the image: the export process, ONNX Runtime, a read-only root file system.
deadline = time.monotonic() + 120  # a bound on waiting, not a timing check
while (level := httpx.get(url + "/level").json())["tier"] != "onnx":
    assert time.monotonic() < deadline, level
    time.sleep(0.5)
r = httpx.post(url + "/predict", content=encode(arr[0]), headers={"content-type": "image/png"})
assert r.json()["level"]["tier"] == "onnx", r.json()
assert r.json()["predictions"][0]["index"] == labels[0], r.json()
print("tier 2 serving inside")
PY
# podman schedules HEALTHCHECKs through systemd, absent here: run the image's check directly.
podman healthcheck run "$NAME" && echo "healthcheck ok"
user=$(podman exec "$NAME" id -u)
[ "$user" = 10001 ] || { echo "runs as uid $user, not 10001"; exit 1; }
podman kill --signal TERM "$NAME" >/dev/null
code=$(podman wait "$NAME")
echo "SIGTERM → exit code $code"
[ "$code" = 0 ] || { podman logs "$NAME" | tail -20; exit 1; }
echo "image test passed in $(( $(date +%s) - t0 )) s"
