"""The model leaves mlconnect: verified bundles (``export``), batch top-k (``predict``) and a torch-free
server for a bundle (``serve --bundle``, the Docker image). Nothing is imported here on purpose: the
bundle server's imports must stay free of torch and mlconnect.engine.
"""
