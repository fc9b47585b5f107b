//! Kubernetes NetworkPolicy (networking.k8s.io/v1) translated into the
//! cilium.io/v2 model. (Being written.)
