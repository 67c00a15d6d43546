"""Who calls: API tokens with roles (``tokens``), what each role may do (``roles``), and the caller a
service records in its audit log (``callers``).

Below the registry in the layers, so that the registry's actor itself checks an approver's token rather
than trusting its client to have done so.
"""
