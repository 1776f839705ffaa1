"""`factory package` and `factory verify`: packaging a run as a specialist, and checking a package.

Domain work lives in factory.specialists (packaging, publishing, verifying); this module prints
what it did and refreshes the index after packaging.
"""

from __future__ import annotations

import sys
from pathlib import Path

from factory.errors import FactoryError


def cli_package(root: Path, run: str | None, best: str | None, force: bool, sign_key: str | None = None,
                sigstore: bool = False) -> int:
    """`factory package <run>` or `factory package --best <recipe>` [--force] [--sign-key PEM | --sigstore]."""
    from factory.records import read_json_object
    from factory.specialists import MANIFEST, best_run, package_run, signing_state

    root = Path(root)
    try:
        if best and run:
            raise FactoryError("package: name a run or --best <recipe>, not both")
        ref = best_run(root, best, log=lambda m: print(m, file=sys.stderr)) if best else run
        if not ref:
            raise FactoryError("package: name a run, or --best <recipe>")
        from factory.runs import resolve_run

        run_dir = resolve_run(root, ref)
        dest = package_run(root, run_dir, force, sign_key, sigstore)
    except FactoryError as e:
        print(f"factory package: {e}", file=sys.stderr)
        return 1
    man = read_json_object(dest / MANIFEST, missing={})
    note = " (forced: the run did not ship; the card says so)" if man.get("forced") else ""
    info = signing_state(dest)
    signed = f"signed by {info['signer']}" if info.get("signed") else "unsigned"
    print(f"{dest}: {len(man.get('files', {}))} files from run {man.get('run_id')}, {signed}, "
          f"manifest sha256 {str(info.get('manifest_sha256'))[:16]}{note}")
    try:
        from factory import index

        index.refresh(root / "runs", only=[])
    except Exception as e:  # the index is derived; packaging has succeeded
        print(f"factory package: index not refreshed ({e})", file=sys.stderr)
    return 0


def cli_verify(path: str, public_key: str | None = None) -> int:
    """`factory verify specialists/<id> [--key PUB]`: 0 when intact, else 1 naming each problem."""
    from factory.records import read_json_object
    from factory.specialists import MANIFEST, signing_state, verify

    try:
        problems = verify(Path(path), public_key)
        info = signing_state(Path(path))
    except FactoryError as e:
        print(f"factory verify: {e}", file=sys.stderr)
        return 1
    if problems:
        for p in problems:
            print(f"factory verify: {path}: {p}", file=sys.stderr)
        return 1
    n = len(read_json_object(Path(path) / MANIFEST, missing={}).get("files", {}))
    who = (f"signature by {info.get('signer')} verifies" if info.get("signed")
           else "unsigned (nothing proves who made it)")
    print(f"{path}: ok, {n} files match manifest.json (sha256 {str(info.get('manifest_sha256'))[:16]}); {who}")
    return 0
