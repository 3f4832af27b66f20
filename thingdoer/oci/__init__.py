"""Host mechanisms for running containers: OCI images, runtime specs and the runtime binary.

- ``image``   reads an OCI image layout and unpacks images safely into a rootfs (overlay-backed).
- ``busybox`` writes images into an OCI layout; builds a busybox image from busybox-static.
- ``spec``    pure: turns a container's process and limits into an OCI runtime ``config.json``.
- ``runc``    the only module that runs the runtime binary (runc, or crun with the same CLI).
- ``shim``    the per-container supervisor and the files it leaves in the bundle.

This package imports only ``thingdoer.errors`` and the standard library.
"""
