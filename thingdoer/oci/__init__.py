"""Host mechanisms for running containers: OCI images, runtime specs and the runtime binary.

- ``image``   the node's image store: an OCI layout of verified blobs, each layer unpacked once
              (safely), and per-container rootfs overlays over the layers.
- ``registry`` the OCI distribution client (auth, manifests, indexes) and layout/tarball import.
- ``reference`` pure: image references normalized as Docker's; the imagePullPolicy decision.
- ``busybox`` writes images into an OCI layout; builds a busybox image from busybox-static.
- ``spec``    pure: turns a container's process and limits into an OCI runtime ``config.json``.
- ``runc``    the only module that runs the runtime binary (runc, or crun with the same CLI).
- ``shim``    the per-container supervisor and the files it leaves in the bundle.

This package imports only ``thingdoer.errors``, the standard library and (``registry``) httpx.
"""
