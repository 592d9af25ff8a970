"""Exports of a build to what other speech toolkits read: lhotse CutSets and NeMo manifests."""
