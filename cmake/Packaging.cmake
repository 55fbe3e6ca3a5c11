# Debian package of the agent (CPack DEB) and its tests. Owned by the packaging work of issue 17;
# included last from the top-level CMakeLists.txt so every install rule is known by then.
