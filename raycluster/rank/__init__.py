"""What runs inside one gang member: the rank task body, ``ctx``, rank logs."""
