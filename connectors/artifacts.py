"""Named binary artifacts beside a target's model (e.g. the code index): the part of
:class:`connectors.Sink` and :class:`connectors.Target` that stages, stores and reads them. Only the
file stores (Lance, Parquet) keep them: a file in the target directory listed with its sha256 in
the target record, published atomically with the rows. Cost: one file write or read."""

from __future__ import annotations

from tldr_index.errors import InvalidInputError


class SinkArtifacts:
    """Mixin of :class:`connectors.Sink`."""

    #: True where the store keeps artifacts (:meth:`store_artifact`): the file stores
    supports_artifacts: bool = False

    def store_artifact(self, name: str, data: bytes) -> None:
        """Stage a named binary artifact (e.g. the code index) beside the model; call it before
        :meth:`store_model`. It is listed with its sha256 in the target record and published
        atomically with the rows; :meth:`Target.artifact` reads it back. Stores without
        :attr:`supports_artifacts` (Qdrant) raise :class:`InvalidInputError`."""
        from .record import check_artifact_name

        self._expect("created", "store_artifact")
        name = check_artifact_name(name)
        if not self.supports_artifacts:
            raise InvalidInputError(
                f"Target '{self.uri}' ({type(self).__name__}) cannot store artifacts; only the "
                f"file stores (Lance, Parquet) do.")
        self._store_artifact(name, bytes(data))

    def _store_artifact(self, name: str, data: bytes) -> None:
        raise NotImplementedError


class TargetArtifacts:
    """Mixin of :class:`connectors.Target`."""

    def version_key(self) -> str:
        """A string that changes whenever the live rows or record change (what a reader caches
        against): the version handle, the record and the row count; stores whose handle does
        not change with every write add what does (Parquet: the part files' sizes and times).
        Cost: a count (metadata reads)."""
        import json

        return json.dumps([self.current_handle(), self.record, self.count()], sort_keys=True,
                          default=str)

    def artifacts(self) -> list[str]:
        """Names of the artifacts listed in the record (see :meth:`Sink.store_artifact`)."""
        return sorted(self.record.get("artifacts") or {})

    def store_artifact(self, name: str, data: bytes) -> None:
        """Store (or replace) artifact ``name`` for the live rows, after they were written (e.g. a
        code index rebuilt over them): the file, then one atomic switch of the record that lists
        it. Raises :class:`VerificationError` (nothing listed) if the target changed since this
        object was opened, and :class:`InvalidInputError` where the store keeps no artifacts."""
        raise InvalidInputError(
            f"Target '{self.uri}' ({type(self).__name__}) cannot store artifacts; only the file "
            f"stores (Lance, Parquet) do.")

    def artifact(self, name: str) -> bytes | None:
        """The bytes of artifact ``name`` (checked against the size and sha256 the record
        lists), or None when the target has none of that name. Raises
        :class:`ModelFormatError` if the listed file is missing or corrupt. Cost: one read."""
        return None
