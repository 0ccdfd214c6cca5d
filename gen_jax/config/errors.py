"""The one error type for a bad config or bad input, naming the field or input at fault."""


class ConfigError(ValueError):
  """A config field (or an input named by one) is invalid.

  The message always starts with the dotted field name, e.g. `model.num_heads: ...`, so a user can
  find the line to fix without reading a traceback.
  """

  def __init__(self, field: str, message: str | None = None):
    if message is None:  # absl's flag parser re-raises errors with their text alone.
      self.field = field.split(":", 1)[0]
      super().__init__(field)
    else:
      self.field = field
      super().__init__(f"{field}: {message}")


def require(condition: bool, field: str, message: str) -> None:
  """Raises ConfigError(field, message) unless `condition` holds."""
  if not condition:
    raise ConfigError(field, message)
