"""Reader kinds that plug into edge.reader_port's registry.

Each module here is one kind: its parser or adapter and the factory it registers with
``@edge.reader_port.register("<protocol>")``. ``edge.reader_port`` imports every module of this package on
first use, so a new kind is a new module here and touches no other edge module (docs/readers.md, "Adding a
reader kind").
"""
