"""One function per figure, each taking plain results and returning a matplotlib ``Figure``.

The figure modules import no other toolkit package: report writers pass them rows and numbers,
and write what they return with ``probes.core.files.save_figure``.
"""
