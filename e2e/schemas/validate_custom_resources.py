"""Validates the custom resources Hookline makes against their projects' own
types (PyPI: cloudcoil-models-keda for KEDA 2.16, cloudcoil-models-prometheus-operator
for prometheus-operator 0.80): every field known, every type right. A field a
model does not know is an error too (a round trip through the model drops it).

Usage: python3 validate_custom_resources.py FILE...
Multi-document YAML; Kubernetes' own kinds are skipped (kubernetes-validate
checks those). Prints one line per object; exits 1 at the first invalid one,
or when no custom resource was found.
"""
import sys

import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PodMonitor, PrometheusRule, ServiceMonitor

MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): (ScaledObject, "KEDA 2.16"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): (ServiceMonitor, "prometheus-operator 0.80"),
    ("monitoring.coreos.com/v1", "PodMonitor"): (PodMonitor, "prometheus-operator 0.80"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (PrometheusRule, "prometheus-operator 0.80"),
}


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
                if not document:
                    continue
                found = MODELS.get((document.get("apiVersion"), document.get("kind")))
                if found is None:
                    continue
                model, project = found
                what = f"{document['kind']} {document.get('metadata', {}).get('name')}"
                try:
                    parsed = model.model_validate(document)
                except Exception as error:  # pydantic's ValidationError, with every bad field
                    print(f"{path}: {what}: invalid for {project}: {error}")
                    return 1
                round_trip = strip_empty(parsed.model_dump(mode="json", by_alias=True, exclude_none=True))
                if round_trip != strip_empty(document):
                    print(f"{path}: {what}: fields {project} does not know: {document} != {round_trip}")
                    return 1
                print(f"{path}: {what} valid for {project}")
                checked += 1
    if checked == 0:
        print("no custom resource found")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
