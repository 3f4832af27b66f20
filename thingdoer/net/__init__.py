"""Pod networking (issue 5): flannel-compatible subnets, a netns per pod. Not built yet: pods
get a network namespace of their own with loopback only."""
