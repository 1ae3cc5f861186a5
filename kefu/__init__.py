"""kefu (客服): turn a company's own support logs and knowledge base into an assistant it runs itself."""

__version__ = "0.1.0"
