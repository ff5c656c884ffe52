public import Foundation

/// The repository's root folder (this file is Tests/TestSupport/Repository.swift
/// in it), for tests that hold the docs to the code.
public let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
