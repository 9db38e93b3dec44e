"""A face's method that is one of its parts' methods: ``search = DelegatedTo("searches", Searches.search)``.

``SupabaseStore`` composes parts and keeps every public method the seed and its users call. Writing
each as ``def search(self, …): return self.searches.search(…)`` would copy every signature and
docstring once more, and the copies drift. This descriptor hands the call to the part's bound method
instead, so ``store.search`` has the part's exact signature, types (``ParamSpec``) and docstring,
for ``help()``, ``inspect.signature`` and a type checker alike.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

__all__ = ["DelegatedTo"]

P = ParamSpec("P")
R = TypeVar("R")


class DelegatedTo(Generic[P, R]):
    def __init__(self, part: str, method: Callable[Concatenate[Any, P], R]):
        self.part = part
        self.name = method.__name__
        self.__doc__ = method.__doc__
        self.__wrapped__ = method  # inspect.signature and help() follow it

    @overload
    def __get__(self, face: None, owner: type) -> DelegatedTo[P, R]: ...

    @overload
    def __get__(self, face: object, owner: type) -> Callable[P, R]: ...

    def __get__(self, face: object | None, owner: type) -> DelegatedTo[P, R] | Callable[P, R]:
        if face is None:
            return self
        return self._bound(face)

    def _bound(self, face: object) -> Callable[P, R]:
        method: Callable[P, R] = getattr(getattr(face, self.part), self.name)
        return method

    def __call__(self, face: object, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``SupabaseStore.search(store, …)``, as a plain method is called through its class."""
        return self._bound(face)(*args, **kwargs)
