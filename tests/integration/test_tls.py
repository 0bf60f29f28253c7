"""Importing rshf must not leave TLS verification disabled (checked in clean processes)."""

import subprocess
import sys
import textwrap


def run(code: str, **kw) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=120, **kw)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_tls_context_unchanged_after_import_and_load():
    out = run("""
        import ssl
        default = ssl._create_default_https_context
        assert default is ssl.create_default_context
        from rsembed_dask.specs import ModelSpec
        from rsembed_dask.embed.weights import import_rshf_scalemae, load_scalemae
        import_rshf_scalemae()
        assert ssl._create_default_https_context is default, "after import_rshf_scalemae"
        load_scalemae(ModelSpec("test-tiny"))
        assert ssl._create_default_https_context is default, "after load_scalemae"
        import rshf.utils  # already imported: no second hack
        assert ssl._create_default_https_context is default
        ctx = ssl._create_default_https_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        print("ok")
    """)
    assert out.strip() == "ok"


def test_raw_rshf_import_does_disable_verification():
    """The hazard is real: a bare ``import rshf.scalemae`` swaps the context."""
    out = run("""
        import ssl
        default = ssl._create_default_https_context
        import rshf.scalemae
        print(ssl._create_default_https_context is default)
    """)
    assert out.strip() == "False"


def test_tls_context_restored_when_import_fails(tmp_path):
    pkg = tmp_path / "rshf"
    (pkg / "scalemae").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import ssl\nssl._create_default_https_context = ssl._create_unverified_context\n")
    (pkg / "scalemae" / "__init__.py").write_text("raise ImportError('broken install')\n")
    out = run(f"""
        import sys, ssl
        sys.path.insert(0, {str(tmp_path)!r})
        default = ssl._create_default_https_context
        from rsembed_dask.errors import ModelError
        from rsembed_dask.embed.weights import import_rshf_scalemae
        try:
            import_rshf_scalemae()
        except ModelError as exc:
            assert "no-deps" in str(exc)
        else:
            raise AssertionError("no ModelError")
        assert ssl._create_default_https_context is default
        print("ok")
    """)
    assert out.strip() == "ok"


def test_tls_verification_restored_when_rshf_was_imported_first():
    """A user imported rshf before us: our import is a no-op, yet verification comes back (warned once)."""
    out = run("""
        import logging, ssl
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)
        logging.getLogger("rsembed_dask.embed.weights").addHandler(Keep())
        import rshf
        assert ssl._create_default_https_context is ssl._create_unverified_context
        from rsembed_dask.specs import ModelSpec
        from rsembed_dask.embed.weights import import_rshf_scalemae, load_scalemae
        import_rshf_scalemae()
        assert ssl._create_default_https_context is ssl.create_default_context, "after import_rshf_scalemae"
        ssl._create_default_https_context = ssl._create_unverified_context  # rshf.senclip does it again
        load_scalemae(ModelSpec("test-tiny"))
        assert ssl._create_default_https_context is ssl.create_default_context, "after load_scalemae"
        ctx = ssl._create_default_https_context()
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
        warnings = [r for r in records if r.levelno == logging.WARNING and "unverified" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in records]
        print("ok")
    """)
    assert out.strip() == "ok"
