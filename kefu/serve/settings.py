"""What `kefu serve` starts with: the project, the database, the address, the channels.

Workers started by uvicorn (`--workers N`) are separate processes that import the app by name,
so the settings travel to them as JSON in the KEFU_SERVE_SETTINGS environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from kefu.config import ProjectConfig, StrictModel
from kefu.serve.channels.wechat import WeChatConfig

ENVIRONMENT_VARIABLE = "KEFU_SERVE_SETTINGS"


class ServeSettings(StrictModel):
    project: str = Field(description="The project folder (or its kefu.yaml).")
    database: str | None = Field(
        None, description="Store URL; none: the project's (serve.database)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    wechat: WeChatConfig | None = Field(None, description="The WeChat channel; none: off.")

    def database_url(self, config: ProjectConfig) -> str:
        if self.database:
            return self.database
        if config.serve.database:
            return config.serve.database
        return f"sqlite:///{Path(config.build_dir).resolve() / 'kefu.db'}"

    def to_environment(self) -> None:
        os.environ[ENVIRONMENT_VARIABLE] = self.model_dump_json()

    @classmethod
    def from_environment(cls) -> ServeSettings:
        return cls.model_validate_json(os.environ[ENVIRONMENT_VARIABLE])
