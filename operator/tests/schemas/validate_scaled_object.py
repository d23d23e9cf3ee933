"""Validates KEDA ScaledObjects against KEDA 2.16's own types (PyPI package
cloudcoil-models-keda): every field known, every type right. A field the
model does not know is an error too (it would be dropped by a round trip).

Usage: python3 validate_scaled_object.py FILE...  (multi-document YAML; other kinds are skipped)
Prints one line per ScaledObject; exits 1 on the first invalid one.
"""
import sys

import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject


def strip_empty(value):
    if isinstance(value, dict):
        return {k: strip_empty(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_empty(v) for v in value]
    return value


def main(paths):
    checked = 0
    for path in paths:
        with open(path) as handle:
            for document in yaml.safe_load_all(handle):
                if not document or document.get("kind") != "ScaledObject":
                    continue
                name = document.get("metadata", {}).get("name")
                model = ScaledObject.model_validate(document)
                round_trip = strip_empty(model.model_dump(mode="json", by_alias=True, exclude_none=True))
                if round_trip != strip_empty(document):
                    print(f"{path}: ScaledObject {name}: fields KEDA does not know: {document} != {round_trip}")
                    return 1
                print(f"{path}: ScaledObject {name} valid for KEDA 2.16")
                checked += 1
    if checked == 0:
        print("no ScaledObject found")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
