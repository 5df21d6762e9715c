"""Name -> object tables for the extension points: evaluation attacks, data sources and
checkpoint-selection rules.

Each table belongs to the module that defines its objects (`dgad_tf.eval_attacks`,
`dgad_tf.data.sources`, `dgad_tf.selection`), and `dgad_tf.config`
asks it for the valid names, so adding one is one object and one `register` call: no name list
to extend elsewhere. Registering happens at import time of the owning module, which never imports
TensorFlow, so a typo in a config is refused before TensorFlow loads. (The Model Garden's
`official/core/registry.py` keeps a dict per collection the same way; here a table is an object
so that its error names the valid choices.)

Example:
    >>> sources = Registry("data source")
    >>> _ = sources.register("toy", object())
    >>> sources.names()
    ('toy',)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Registry:
    """An ordered table of named entries of one kind, filled by `register`.

    Names are lower-case identifiers; registering a taken name is an error unless `replace=True`,
    so two modules cannot silently shadow each other. The order of registration is the order of
    `names()`, which error messages and `--help` texts list. An entry of the wrong type, or one
    that `check` refuses, is refused before it is stored, whichever way it is registered (the
    owning module's `register_*` function, `register` or its decorator form).

    Args:
        kind: what the entries are, for messages (e.g. "evaluation attack").
        entry_type: the class every entry must be an instance of. Defaults to None (any).
        check: `check(name, entry)`, raising ValueError for an entry that does not fit its
            table (e.g. fields that must come in pairs). Defaults to None (no check).
    """

    def __init__(
        self, kind: str, entry_type: Optional[type] = None, check: Optional[Callable] = None
    ):
        self.kind = kind
        self.entry_type = entry_type
        self.check = check
        self._entries: dict[str, Any] = {}

    def register(self, name: str, entry: Any = None, *, replace: bool = False):
        """Add `entry` under `name`; without `entry`, a decorator that registers what it wraps.

        Args:
            name: a lower-case identifier (letters, digits, underscores).
            entry: the object to register. Defaults to None (return a decorator).
            replace: allow replacing an entry of the same name. Defaults to False.

        Returns:
            `entry` (or the decorator), so a class or function can be registered where defined.

        Raises:
            ValueError: a name that is not a lower-case identifier, one already taken, or an
                entry that `check` refuses.
            TypeError: an entry that is not an instance of `entry_type`, naming the table.
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"a {self.kind} name must be a lower-case identifier (letters, digits, "
                f"underscores); received name={name!r}"
            )

        def add(obj):
            if self.entry_type is not None and not isinstance(obj, self.entry_type):
                raise TypeError(
                    f"{self.kind} {name!r} must be an instance of {self.entry_type.__name__}; "
                    f"received {type(obj).__name__}"
                )
            if self.check is not None:
                self.check(name, obj)
            if name in self._entries and not replace:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; choose another name or pass "
                    "replace=True"
                )
            self._entries[name] = obj
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove `name` (a test's or a session's own entry); KeyError if it is not there."""
        del self._entries[name]

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name: str, key: Optional[str] = None, error: Callable = ValueError):
        """The entry registered as `name`.

        Args:
            name: the name to look up.
            key: the argument or config key `name` came from, for the message. Defaults to None
                (the kind).
            error: the exception class raised for an unknown name. Defaults to ValueError.

        Raises:
            error: naming `key`, the value received and the valid choices.
        """
        if name not in self._entries:
            key = key or self.kind
            raise error(
                f"`{key}` must be one of {', '.join(self._entries)}; received {key}={name!r}"
            )
        return self._entries[name]
