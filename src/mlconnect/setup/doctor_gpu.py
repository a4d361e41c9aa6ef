"""The GPU part of `mlconnect doctor`: the Python programs it runs on the host, and the verdict on torch's answer.

The verdict is a pure function of that answer (status, detail, fix), so every branch is tested
without a GPU; doctor.py turns it into a row.
"""

from __future__ import annotations

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

PY_TORCH = (
    "import json, os\n"
    "try:\n    import torch\nexcept Exception as e:\n"
    "    print(json.dumps({'error': type(e).__name__ + ': ' + str(e)})); raise SystemExit(0)\n"
    "d = {'torch': torch.__version__, 'cuda_build': torch.version.cuda, 'cuda': torch.cuda.is_available(),\n"
    "     'gpus': [], 'visible': os.environ.get('CUDA_VISIBLE_DEVICES'),\n"
    "     'wsl_lib': os.path.isdir('/usr/lib/wsl/lib')}\n"
    "try:\n    d['wsl'] = 'microsoft' in open('/proc/sys/kernel/osrelease').read().lower()\n"
    "except OSError:\n    d['wsl'] = False\n"
    "if d['cuda']:\n"
    "    for i in range(torch.cuda.device_count()):\n"
    "        p = torch.cuda.get_device_properties(i)\n"
    "        d['gpus'].append([p.name, p.total_memory])\n"
    "print(json.dumps(d))"
)


def gpu_verdict(d: dict, where: str) -> tuple[str, str, str]:
    """The gpu row from PY_TORCH's answer. A CUDA build that sees no GPU is a visibility problem
    (driver, CUDA_VISIBLE_DEVICES, WSL's driver folder), never a reason to reinstall torch."""
    if "error" in d:
        return FAIL, f"torch does not import on {where}: {d['error'][:120]}", ""
    if d.get("cuda"):
        gpus = ", ".join(f"{n} {m / 2**30:.1f} GiB" for n, m in d["gpus"])
        return PASS, f"{gpus} (torch {d['torch']}, CUDA {d.get('cuda_build')})", ""
    if not d.get("cuda_build"):
        return (WARN, f"torch {d['torch']} imports, but CUDA is not available (a CPU-only torch build): "
                "training runs on CPU", "check `nvidia-smi` there; install a CUDA build of torch "
                "(pip install torch --index-url https://download.pytorch.org/whl/cu124)")
    detail = (f"torch {d['torch']} is a CUDA {d['cuda_build']} build but sees no GPU on {where}: "
              "training runs on CPU")
    visible = d.get("visible")
    if visible is not None and visible.split(",")[0].strip() in ("", "-1"):  # CUDA stops at the first bad id
        fix = (f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU: unset it there (env lines in mlconnect.toml, "
               "~/.bashrc); torch itself is fine")
    elif d.get("wsl") and not d.get("wsl_lib"):
        fix = ("the GPU is not visible in WSL: /usr/lib/wsl/lib is missing; install or update the NVIDIA driver "
               "on Windows (not inside WSL), run `wsl --update`, then `wsl --shutdown`; torch itself is fine")
    else:
        fix = ("the GPU is not visible: check `nvidia-smi` there (driver loaded?) and CUDA_VISIBLE_DEVICES"
               + (f" (now {visible!r})" if visible is not None else "")
               + "; on WSL2 the driver comes from Windows via /usr/lib/wsl/lib; torch itself is fine")
    return WARN, detail, fix


PY_NVIDIA_SMI = (
    "import json, os, shutil, subprocess\n"
    "p = shutil.which('nvidia-smi'); on_path = p is not None\n"
    "w = '/usr/lib/wsl/lib/nvidia-smi'\n"
    "if p is None and os.path.exists(w): p = w\n"
    "d = {'path': p, 'on_path': on_path}\n"
    "if p:\n"
    "    try:\n"
    "        cp = subprocess.run([p, '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],\n"
    "                            capture_output=True, text=True, timeout=10)\n"
    "        d.update(rc=cp.returncode, out=cp.stdout.strip(), err=(cp.stderr or cp.stdout).strip()[-300:])\n"
    "    except Exception as e:\n"
    "        d.update(rc=-1, out='', err=str(e))\n"
    "print(json.dumps(d))"
)
