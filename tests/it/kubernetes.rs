//! deploy/kubernetes/ manifests checked with kubernetes-validate --strict (issue 14): filled in by its author.
