"""Fingerprints every config in `configs/`: its values, its initial parameters and a first loss.

A check for refactoring, not a test: run it before and after a change that must not
alter behaviour, and compare.

  python tests/fingerprint_configs.py --out=before.json
  python tests/fingerprint_configs.py --out=after.json --compare=before.json

For each config: every key's value, a SHA-256 of the initial parameters (names,
shapes, dtypes and bytes, seed `config.seed`), and the logits and loss of one forward
pass (train=False) on a fixed random clip with every parameter perturbed by a fixed
draw (so zero-initialised heads do not hide the rest), bit for bit. Keys added or
removed since the baseline, and keys the model never reads (`registry.inactive_keys`,
refused when set), are listed but not counted as differences.
"""

import argparse
import glob
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = repr(v)
  return out


def fingerprint(name):
  """`{'values', 'params_sha256', 'loss'}` of `configs/<name>.py`."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from tests.tiny import load_config
  from vivit_knn.models.registry import build_model

  config = load_config(name)
  d = config.dataset
  classes = int(d.get("num_classes", 0) or 4)
  shape = (1, d.num_frames, d.image_size, d.image_size, 3)
  model = build_model(config.model, classes)
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
  params = model.init({"params": jax.random.key(config.seed)}, x, train=False)["params"]
  digest = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda t: str(t[0])):
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}{leaf.shape}{leaf.dtype}".encode())
    digest.update(leaf.tobytes())
  # Zero-initialised heads make the logits of fresh parameters all zero: perturb every
  # leaf (a fixed draw per leaf, in path order) so the forward pass depends on all of them.
  rng = np.random.default_rng(1)
  leaves = sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda t: str(t[0]))
  noise = {jax.tree_util.keystr(p): rng.normal(size=np.shape(v)).astype(np.float32)
           for p, v in leaves}
  perturbed = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.02 * noise[jax.tree_util.keystr(p)].astype(v.dtype), params)
  logits, _ = model.apply({"params": perturbed}, x, train=False)
  logits = np.asarray(logits, np.float32)
  loss = float(-jax.nn.log_softmax(jnp.asarray(logits))[0, 0])
  from vivit_knn.models.registry import inactive_keys
  unread = sorted(f"model.{k}" for k in inactive_keys(config.model, "model"))
  return {"values": _flat(config.to_dict()), "unread": unread, "params_sha256": digest.hexdigest(),
          "logits_sha256": hashlib.sha256(logits.tobytes()).hexdigest(), "loss": loss.hex()}


def main():
  """Writes the fingerprints, and compares them with a baseline when asked."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--compare")
  parser.add_argument("--configs", default="", help="comma-separated names (default: all)")
  args = parser.parse_args()
  names = ([n for n in args.configs.split(",") if n] or
           sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))))
  result = {}
  for name in names:
    result[name] = fingerprint(name)
    print(name, result[name]["params_sha256"][:12], float.fromhex(result[name]["loss"]),
          flush=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1, sort_keys=True)
  if not args.compare:
    return 0
  with open(args.compare) as f:
    base = json.load(f)
  bad = 0
  for name, want in base.items():
    got = result.get(name)
    if got is None:
      print(f"{name}: missing now")
      bad += 1
      continue
    changed = {k: (v, got["values"].get(k)) for k, v in want["values"].items()
               if got["values"].get(k) != v}
    added = sorted(set(got["values"]) - set(want["values"]))
    removed = sorted(k for k in changed if k not in got["values"])
    # Keys the model never reads (`registry.inactive_keys`) now stay at their defaults.
    unread = sorted(k for k in changed for u in got.get("unread", ())
                    if k == u or k.startswith(u + "."))
    for key in removed + unread:
      del changed[key]
    for key, (old, new) in changed.items():
      print(f"{name}: {key}: {old} -> {new}")
    if added:
      print(f"{name}: new keys (not differences): {', '.join(added)}")
    if removed:
      print(f"{name}: removed keys (not differences): {', '.join(removed)}")
    for key in unread:
      print(f"{name}: {key}: {want['values'][key]} -> {got['values'][key]} "
            "(never read by this model, now at its default; not a difference)")
    for field in ("params_sha256", "logits_sha256", "loss"):
      if got[field] != want[field]:
        print(f"{name}: {field} differs")
    bad += bool(changed) + sum(got[f] != want[f] for f in ("params_sha256", "logits_sha256",
                                                           "loss"))
  print(f"{len(base)} configs compared, {bad} differences")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
