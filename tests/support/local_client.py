"""A stand-in for the LocalClient the pack's runners open, for loader-level runner tests."""


class LocalClientStandIn:
    """
    What ``salt.client.get_local_client`` gives a runner, as the runner uses
    it: patched in as the factory, called (it returns itself) and entered as
    a context manager. Each test's subclass defines ``cmd_iter(targets, fun,
    arg=(), kwarg=None, tgt_type="glob", timeout=None)``, yielding
    ``{minion: {"ret": ..., "retcode": ...}}`` as Salt does.
    """

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
