"""The contract: the Avro codec, what an event may say, priced rows and scope keys.

Every other stage imports these; they import nothing above them.
"""
