"""The project's own exceptions; lower-layer errors become these at stage boundaries."""


class TenantwatchError(Exception):
    """Base class of every error tenantwatch raises on purpose."""


class ConfigError(TenantwatchError):
    """The configuration is invalid; the message names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class KernelSupportError(TenantwatchError):
    """The kernel or bcc cannot run the probes (no headers, no BPF, no tracefs); see `doctor`."""


class PermissionProblem(TenantwatchError):
    """The process lacks the privileges to load BPF programs; see `doctor`."""
