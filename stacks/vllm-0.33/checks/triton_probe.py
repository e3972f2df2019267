"""Compile small Triton kernels for sm_60/61/70 with whatever triton is first on sys.path; no GPU needed."""
import json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

@triton.jit
def evict(X, Y, N: tl.constexpr):
    o = tl.arange(0, N)
    a = tl.load(X + o, eviction_policy="evict_last")
    b = tl.load(X + N + o, eviction_policy="evict_first")
    tl.store(Y + o, a + b, eviction_policy="evict_last")

@triton.jit
def atomic_f32(X, Y, N: tl.constexpr, SEM: tl.constexpr, SCOPE: tl.constexpr):
    o = tl.arange(0, N)
    tl.atomic_add(Y + (o % 64), tl.load(X + o), sem=SEM, scope=SCOPE)

@triton.jit
def atomic_f32_used(X, Y, Z, N: tl.constexpr, SEM: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(Z + o, tl.atomic_add(Y + (o % 64), tl.load(X + o), sem=SEM))

@triton.jit
def atomic_i32(X, Y, Z, N: tl.constexpr, SEM: tl.constexpr):
    o = tl.arange(0, N)
    old = tl.atomic_cas(Y + (o % 64), tl.load(X + o), tl.load(X + N + o), sem=SEM)
    old2 = tl.atomic_xchg(Y + 64 + (o % 64), old, sem=SEM)
    tl.store(Z + o, tl.atomic_max(Y + 128 + (o % 64), old2, sem=SEM))

@triton.jit
def atomic_f16_unused(X, Y, N: tl.constexpr, SEM: tl.constexpr):
    o = tl.arange(0, N)
    tl.atomic_add(Y + (o % 64), tl.load(X + o), sem=SEM)

@triton.jit
def atomic_f16_used(X, Y, Z, N: tl.constexpr, SEM: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(Z + o, tl.atomic_add(Y + (o % 64), tl.load(X + o), sem=SEM))

@triton.jit
def atomic_f16_vec(X, Y, N: tl.constexpr, SEM: tl.constexpr):
    # contiguous, aligned: lets Triton pack two halves (f16x2)
    o = tl.arange(0, N)
    tl.atomic_add(Y + o, tl.load(X + o), sem=SEM)

@triton.jit
def atomic_f16_cas(X, Y, Z, N: tl.constexpr, SEM: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(Z + o, tl.atomic_cas(Y + (o % 64), tl.load(X + o), tl.load(X + N + o), sem=SEM))

CASES = {
    "evict": (evict, {"X": "*fp32", "Y": "*fp32", "N": "constexpr"}, {"N": 256}),
    **{f"f32/{sem}/{scope}": (atomic_f32, {"X": "*fp32", "Y": "*fp32", "N": "constexpr", "SEM": "constexpr", "SCOPE": "constexpr"},
                             {"N": 256, "SEM": sem, "SCOPE": scope})
       for sem in ("relaxed", "acquire", "release", "acq_rel") for scope in ("gpu", "cta", "sys")},
    "f32used/acq_rel": (atomic_f32_used, {"X": "*fp32", "Y": "*fp32", "Z": "*fp32", "N": "constexpr", "SEM": "constexpr"}, {"N": 256, "SEM": "acq_rel"}),
    "i32/acq_rel": (atomic_i32, {"X": "*i32", "Y": "*i32", "Z": "*i32", "N": "constexpr", "SEM": "constexpr"}, {"N": 256, "SEM": "acq_rel"}),
    **{f"f16{kind}/{sem}": (fn, sig, {"N": 256, "SEM": sem})
       for sem in ("relaxed", "acq_rel")
       for kind, fn, sig in (
           ("unused", atomic_f16_unused, {"X": "*fp16", "Y": "*fp16", "N": "constexpr", "SEM": "constexpr"}),
           ("used", atomic_f16_used, {"X": "*fp16", "Y": "*fp16", "Z": "*fp16", "N": "constexpr", "SEM": "constexpr"}),
           ("vec", atomic_f16_vec, {"X": "*fp16", "Y": "*fp16", "N": "constexpr", "SEM": "constexpr"}),
           ("cas", atomic_f16_cas, {"X": "*fp16", "Y": "*fp16", "Z": "*fp16", "N": "constexpr", "SEM": "constexpr"}),
       )},
}

def run(archs):
    out = {}
    for name, (fn, sig, consts) in CASES.items():
        for arch in archs:
            key = f"{name}@{arch}"
            try:
                k = triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32))
                ptx = k.asm["ptx"]
                ops = sorted(set(re.findall(r"^\s*(?:@!?%\w+\s+)?((?:atom|red|membar|ld|st)\.[\w.:]+)", ptx, re.M)))
                ops = [o for o in ops if o.startswith(("atom", "red", "membar")) or "evict" in o or "L1::" in o or "L2::" in o]
                out[key] = {"ok": True, "ops": ops}
            except Exception as e:
                msg = str(e)
                m = re.findall(r"; error\s+:\s*([^\n]+)", msg)
                out[key] = {"ok": False, "error": (m[0] if m else msg.splitlines()[0] if msg else type(e).__name__)[:160]}
    return out

if __name__ == "__main__":
    archs = [int(a) for a in sys.argv[1].split(",")] if len(sys.argv) > 1 else [60, 61, 70]
    res = run(archs)
    print("triton", triton.__version__, triton.__file__)
    for k, v in res.items():
        print(f"{k:28s}", "ok  " + " ".join(v["ops"]) if v["ok"] else "FAIL " + v["error"])
