"""What a user can choose, by name: each registry maps the names a sweep file or a call uses to
the kernels' codes, holds the defaults, and raises a ``ValueError`` that lists the valid names.

``activations``, ``losses``, ``inits``, ``optim`` (PyTorch's update rules and option names),
``clipping``; ``defaults`` holds every default value once; ``registry`` the shared lookup.
"""
