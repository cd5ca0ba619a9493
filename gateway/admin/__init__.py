"""The admin API: teams and keys over HTTP, under its own token (see `admin/app.py`).

`build_admin_app()` is what the main application mounts at `/admin`.
"""
