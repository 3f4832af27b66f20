"""apid (``server``): the Kubernetes core/v1 subset over the store; and ``client``, the CLI's way in."""
