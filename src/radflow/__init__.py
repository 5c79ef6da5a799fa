"""radflow — MLOps for medical imaging."""
