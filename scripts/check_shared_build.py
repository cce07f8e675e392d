"""Checks that `cargo test` (scripts/test.sh) and the notebooks' evcxr kernel still share one build of
every dependency, and says what to change when they don't. Exits 1 on a mismatch (test.sh only warns:
a mismatch costs build time, not correctness).

    $INTERP_KIT_CACHE/venv/bin/python scripts/check_shared_build.py [EVCXR_CRATE_DIR]

EVCXR_CRATE_DIR (default $INTERP_KIT_CACHE/evcxr/slot-0) holds the Cargo.toml evcxr generates; the
kernel rewrites it at every start. Sharing needs
  1. the workspace's [profile.dev] equal to that generated [profile.dev], with no [profile.dev.package.*]
     or build-override (they would change how the dependencies compile);
  2. the same features for every dependency with and without dev-dependencies (evcxr's build has
     none; cargo test unifies them in);
  3. the same RUSTFLAGS, CARGO_INCREMENTAL, --target and target dir, which scripts/test.sh passes;
  4. the same dependency versions: the kernel (scripts/evcxr_kernel.sh) puts the workspace's Cargo.lock
     into the evcxr build dir, and this compares the lock evcxr last built with against it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def features(edges: str) -> dict[str, str]:
    out = subprocess.run(
        ["cargo", "tree", "--workspace", "--locked", "--prefix", "none", "-e", edges, "-f", "{p}|{f}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return {p.removesuffix(" (*)"): f.removesuffix(" (*)") for p, _, f in (line.partition("|") for line in out.splitlines()) if p}


def main() -> int:
    cache = Path(os.environ.get("INTERP_KIT_CACHE", Path.home() / ".cache" / "interp_kit"))
    crate = Path(sys.argv[1]) if len(sys.argv) > 1 else cache / "evcxr" / "slot-0"
    problems = []

    generated = crate / "Cargo.toml"
    if not generated.is_file():
        print(f"check_shared_build: no evcxr Cargo.toml at {generated} (no kernel has run there yet): profile not checked")
    else:
        theirs = tomllib.loads(generated.read_text())["profile"]["dev"]
        ours = dict(tomllib.loads((ROOT / "Cargo.toml").read_text()).get("profile", {}).get("dev", {}))
        extra = [k for k in ("package", "build-override") if ours.pop(k, None) is not None]
        if ours != theirs or extra:
            problems.append(
                f"the workspace's [profile.dev] differs from evcxr's ({generated}):\n"
                f"    workspace: {ours}{' + ' + ', '.join(extra) if extra else ''}\n    evcxr:     {theirs}\n"
                "  copy evcxr's [profile.dev] into Cargo.toml (and drop package/build-override tables)"
            )

    built_lock = crate / "Cargo.lock"
    if built_lock.is_file():
        def versions(path: Path) -> set[tuple[str, str]]:
            return {(p["name"], p["version"]) for p in tomllib.loads(path.read_text()).get("package", [])}
        other = sorted(p for p in versions(built_lock) - versions(ROOT / "Cargo.lock") if p[0] != "ctx")
        if other:
            problems.append(
                f"{built_lock} has {len(other)} package versions that the workspace's Cargo.lock does not: "
                + ", ".join(f"{n} {v}" for n, v in other[:12]) + (" ..." if len(other) > 12 else "")
                + "\n  the last kernel in that dir did not restore the workspace's lock (an older kernelspec? re-run"
                " scripts/setup.sh), or its notebook added crates of its own"
            )

    normal, dev = features("normal,build"), features("normal,build,dev")
    for pkg, feats in sorted(normal.items()):
        if dev.get(pkg, feats) != feats:
            problems.append(
                f"{pkg}: features [{feats}] without dev-dependencies, [{dev[pkg]}] with them\n"
                f"  enable the extra features in a normal dependency of interp_kit (see the getrandom line there)"
            )

    for p in problems:
        print(f"check_shared_build: {p}")
    if problems:
        print("check_shared_build: cargo test and the notebooks do NOT share dependency builds (slower, still correct)")
        return 1
    print("check_shared_build: ok: cargo test and the notebook kernel share dependency builds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
