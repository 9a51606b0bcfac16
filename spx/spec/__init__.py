"""The framework-neutral job spec: one YAML file describes one job for any backend."""
from spx.spec.models import Spec
from spx.spec.load import load_spec, apply_overrides, spec_to_yaml

__all__ = ["Spec", "load_spec", "apply_overrides", "spec_to_yaml"]
