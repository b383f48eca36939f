"""Validates rendered manifests (multi-document YAML files) without a cluster.

Kubernetes' own kinds are checked with kubernetes-validate in strict mode (unknown fields
fail); KEDA's ScaledObject and TriggerAuthentication against the schemas vendored in
schemas/ (see schemas/generate.py). Any other kind is an error: it would go unchecked.

    python3 deploy/k8s/validate.py [--kubernetes-version 1.30.0] rendered.yaml...
"""

import argparse
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import yaml

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh-v1alpha1-scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh-v1alpha1-triggerauthentication.json",
}


def check(document, version):
    """The problems of one resource (empty when valid)."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key in CUSTOM:
        schema = json.loads((SCHEMAS / CUSTOM[key]).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(document)]
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'/'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"no schema: {error.message}"]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", default="1.30.0")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    failed = False
    for path in args.files:
        with open(path) as stream:
            documents = [d for d in yaml.safe_load_all(stream) if d]
        for document in documents:
            name = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
            problems = check(document, args.kubernetes_version)
            for problem in problems:
                print(f"{path}: {name}: {problem}")
            failed |= bool(problems)
        print(f"{path}: {len(documents)} resources checked")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
