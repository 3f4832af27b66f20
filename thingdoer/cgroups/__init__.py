"""cgroups: the only code that knows cgroupfs.

``resources`` turns pod limits into the OCI ``linux.resources`` runc applies (pure);
``fs`` finds the host's hierarchies (v2, or v1 on hybrid hosts) and removes a subtree.
"""
