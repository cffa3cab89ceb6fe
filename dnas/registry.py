"""A named registry: plain dict + decorator, with an error that lists the valid names.

Relaxations (and, later, regularizers) are chosen by a config string; a miss must tell the
user what the valid choices are instead of raising a bare KeyError.
"""
from typing import Callable, Generic, TypeVar

T = TypeVar('T')


class Registry(Generic[T]):
  """Maps names to objects; `kind` only shapes error messages."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def decorator(obj: T) -> T:
      if name in self._items:
        raise ValueError(f'{self.kind} {name!r} is already registered')
      self._items[name] = obj
      return obj
    return decorator

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      raise ValueError(f'unknown {self.kind} {name!r}; valid names: '
                       f'{", ".join(sorted(self._items))}') from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items
