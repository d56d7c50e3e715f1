def pack_event_hook(event):  # type: ignore[no-untyped-def]
    raise NotImplementedError  # written by the feeds-core helper
