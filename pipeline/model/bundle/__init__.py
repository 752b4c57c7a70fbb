"""Importing third-party models (MONAI bundles) into segnode manifests, read as data."""
